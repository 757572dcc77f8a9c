"""NumPy packing against seqio's own packing and converter (the oracle): same rows, bit for bit."""
import gin
import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

import tasks.synthetic  # noqa: E402,F401  (registers synthpre_*)
from synthpre_jax.data import dataset as data_lib  # noqa: E402
from synthpre_jax.data.packing import (MODEL_FEATURES, NumpyPackingEncDecFeatureConverter,  # noqa: E402
                                       model_features, packed_batches)
from synthpre_jax.data.sources import seqio_packing_groups  # noqa: E402
from synthpre_jax.synthetic.ragged import Ragged, greedy_rows, pack_like_seqio  # noqa: E402


def _dataset(examples):
    return tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})


def _edge_examples(rng, n, max_len):
    """Random examples plus seqio's corner cases: empty features, ids 0 inside, too long."""
    out = []
    for i in range(n):
        ex = {}
        for k in ("inputs", "targets"):
            length = int(rng.integers(0, max_len + 1))
            v = rng.integers(1, 50, size=length).astype(np.int32)
            if i % 7 == 3 and length > 2:
                v[length // 2] = 0            # a padding id inside: seqio keeps count-of-nonzero ids
            ex[k] = v
        if i % 11 == 5:
            ex["targets"] = np.zeros(0, np.int32)
        out.append(ex)
    return out


def _rows(ds):
    return list(ds.as_numpy_iterator())


def _assert_same_rows(ref, got):
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("lengths", [{"inputs": 7, "targets": 5}, {"inputs": 4, "targets": 9}])
def test_pack_like_seqio_equals_trim_and_pack_dataset(lengths):
    rng = np.random.default_rng(0)
    examples = _edge_examples(rng, 61, max_len=11)
    ref = _rows(seqio.utils.trim_and_pack_dataset(_dataset(examples), lengths))
    blocks = iter([{k: Ragged.from_rows([e[k] for e in examples[a:a + 10]]) for k in lengths}
                   for a in range(0, len(examples), 10)])
    got = []
    for group in seqio_packing_groups(blocks, max(lengths.values())):
        packed = pack_like_seqio(group, lengths)
        got += [{k: v[r] for k, v in packed.items()} for r in range(len(packed["inputs"]))]
    _assert_same_rows(ref, got)


def test_greedy_rows_hand_worked():
    # capacities 5/3: (2,1) (2,1) share a row; (2,2) would overflow targets (1+1+2 > 3);
    # (5,0) overflows inputs (2+5 > 5); (0,3) still fits beside (5,0); (1,0) does not (6 > 5)
    rows = greedy_rows(np.array([[2, 1], [2, 1], [2, 2], [5, 0], [0, 3], [1, 0]]), [5, 3])
    np.testing.assert_array_equal(rows, [0, 0, 1, 2, 2, 3])


@pytest.mark.parametrize("bos_id", [0, 3])
def test_converter_equals_seqio_converter(bos_id):
    rng = np.random.default_rng(1)
    examples = _edge_examples(rng, 45, max_len=6)  # the converter rejects longer inputs
    lengths = {"inputs": 8, "targets": 6}
    ref = _rows(seqio.EncDecFeatureConverter(pack=True, bos_id=bos_id)(_dataset(examples), lengths))
    got = _rows(NumpyPackingEncDecFeatureConverter(pack=True, bos_id=bos_id)(_dataset(examples), lengths))
    _assert_same_rows(ref, got)
    # unpacked: seqio's own path
    ref = _rows(seqio.EncDecFeatureConverter(pack=False)(_dataset(examples), lengths))
    got = _rows(NumpyPackingEncDecFeatureConverter(pack=False)(_dataset(examples), lengths))
    _assert_same_rows(ref, got)


def test_model_features_hand_worked():
    packed = {"inputs": np.array([[7, 8, 1, 9, 1, 0]]), "inputs_segment_ids": np.array([[1, 1, 1, 2, 2, 0]]),
              "inputs_positions": np.array([[0, 1, 2, 0, 1, 0]]),
              "targets": np.array([[3, 9, 1, 4, 1, 0, 0]]), "targets_segment_ids": np.array([[1, 1, 1, 2, 2, 0, 0]]),
              "targets_positions": np.array([[0, 1, 2, 0, 1, 0, 0]])}
    out = model_features(packed)
    np.testing.assert_array_equal(out["decoder_input_tokens"], [[0, 3, 9, 0, 4, 0, 0]])
    np.testing.assert_array_equal(out["decoder_loss_weights"], [[1, 1, 1, 1, 1, 0, 0]])


def _seqio_task_rows(task, lengths, converter, n, shard=None, seed=0):
    ds = task.get_dataset(lengths, split="train", shuffle=False, seed=seed, shard_info=shard)
    return _rows(converter(ds, lengths).take(n))


@pytest.mark.parametrize("name", ["induct"])
def test_prepacked_synthetic_task_equals_seqio_packing(name):
    lengths = {"inputs": 96, "targets": 64}
    plain = seqio.get_mixture_or_task("synthpre_" + name)
    packed = tasks.synthetic.register_synthetic_task(
        name, task_name=f"test_packing_{name}", pack_lengths=lengths)
    try:
        ref = _seqio_task_rows(plain, lengths, seqio.EncDecFeatureConverter(pack=True), 30)
        got = _seqio_task_rows(packed, lengths, NumpyPackingEncDecFeatureConverter(pack=True), 30)
        _assert_same_rows(ref, got)
        # seqio's own pre-packed converter reads the same rows
        pre = {k + s: v for k, v in lengths.items() for s in ("", "_segment_ids", "_positions")}
        ds = packed.get_dataset(lengths, split="train", shuffle=False, seed=0)
        _assert_same_rows(ref, _rows(seqio.PrePackedEncDecFeatureConverter(pack=False)(ds, pre).take(30)))
    finally:
        seqio.TaskRegistry.remove(f"test_packing_{name}")


@pytest.mark.parametrize("name,shard_id,seed", [("synthpre_sort", 0, 0), ("synthpre_sort", 1, 7),
                                                ("synthpre_nesting_language", 1, 3)])
def test_training_batches_equal_seqio_batches(name, shard_id, seed):
    """The trainer's NumPy batches against seqio's, for a plain task and for a
    span-corrupted one (documents -> T5 span corruption -> EOS -> packing)."""
    cfg = data_lib.DatasetConfig(mixture_or_task_name=name,
                                 task_feature_lengths={"inputs": 128, "targets": 96},
                                 batch_size=4, pack=True, seed=seed)
    obj = seqio.get_mixture_or_task(name)
    assert data_lib.packable_synthetic_source(obj, cfg) is obj.source
    got = list(data_lib.get_dataset(cfg, shard_id, 2).take(6).as_numpy_iterator())
    ref = seqio.get_dataset(obj, task_feature_lengths=dict(cfg.task_feature_lengths),
                            feature_converter=seqio.EncDecFeatureConverter(pack=True),
                            dataset_split="train", shuffle=True, seed=seed, verbose=False,
                            shard_info=seqio.ShardInfo(index=shard_id, num_shards=2))
    ref = list(ref.batch(4, drop_remainder=True).take(6).as_numpy_iterator())
    _assert_same_rows(ref, got)
    assert sorted(got[0]) == sorted(MODEL_FEATURES)


def test_fast_path_only_where_it_is_exact():
    base = dict(task_feature_lengths={"inputs": 64, "targets": 64}, pack=True)
    check = data_lib.packable_synthetic_source
    get = seqio.get_mixture_or_task
    assert check(get("synthpre_set"), data_lib.DatasetConfig("synthpre_set", **base)) is not None
    assert check(get("synthpre_set"), data_lib.DatasetConfig("synthpre_set", **{**base, "pack": False})) is None
    assert check(get("synthpre_set"), data_lib.DatasetConfig("synthpre_set", split="validation", **base)) is None
    assert check(get("synthpre_set"), data_lib.DatasetConfig(
        "synthpre_set", use_custom_packing_ops=True, **base)) is None
    assert check(get("synthpre_lime"), data_lib.DatasetConfig("synthpre_lime", **base)) is None  # mixture
    nesting = get("synthpre_nesting_language")
    assert check(nesting, data_lib.DatasetConfig("synthpre_nesting_language", **base)) is nesting.source
    short = {**base, "task_feature_lengths": {"inputs": 64, "targets": 8}}  # seqio raises here
    assert check(nesting, data_lib.DatasetConfig("synthpre_nesting_language", **short)) is None
    with gin.unlock_config():
        gin.bind_parameter("synthpre.span_corruption.merge_examples_to_reduce_padding", False)
    try:
        assert check(nesting, data_lib.DatasetConfig("synthpre_nesting_language", **base)) is None
    finally:
        gin.clear_config()


def test_packed_batches_regroup_rows():
    rng = np.random.default_rng(2)
    lengths = {"inputs": 6, "targets": 6}
    examples = _edge_examples(rng, 40, max_len=5)
    groups = [{k: Ragged.from_rows([e[k] for e in examples[a:a + 6]]) for k in lengths}
              for a in range(0, 40, 6)]
    rows = [model_features(pack_like_seqio(g, lengths)) for g in groups]
    flat = {n: np.concatenate([r[n] for r in rows]) for n in MODEL_FEATURES}
    batches = list(packed_batches(iter(groups), lengths, 5))
    assert len(batches) == len(flat["decoder_target_tokens"]) // 5
    for i, b in enumerate(batches):
        for n in MODEL_FEATURES:
            np.testing.assert_array_equal(b[n], flat[n][5 * i:5 * i + 5])
