"""A bundle's head as ONNX (torch.onnx, skl2onnx, onnxmltools) or as plain arrays for numpy.

Which converter takes which head (EXPORTS): logreg, rf -> skl2onnx; xgb -> onnxmltools; fcnn,
fcnn-weighted, attention and the spectrogram heads (cnn, lstm, cnn-lstm: over log-mel rows) ->
torch.onnx; svm and a multi-label logreg -> head.npz, evaluated in numpy (numpy_heads), and so are a multi-label rf and xgb (their trees as arrays).

Every head written here maps rows of embedding features [batch, features] to the head's own
class columns (its classes_, in order) as probabilities (the attention head: the rows are one
track's segments, each given the track's probabilities): head.onnx with input "embedding" and
output "probabilities", or head.npz (arrays only, read with allow_pickle=False) for a head that
no converter takes as it is; `onnx_runtime` evaluates either without torch or scikit-learn.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from wav2genre_cache._io import atomic_write
from wav2genre_cache.errors import ExportError
from wav2genre_cache.heads.spectrogram import SPECTROGRAM_HEADS

OPSET = 17
XGB_OPSET = 15  # the highest onnxmltools 1.16 converts XGBoost at
HEAD_ONNX = "head.onnx"
HEAD_NPZ = "head.npz"


# How each head exports: `export --help` and the README say the same.
EXPORTS = {
    "logreg": "skl2onnx (a multi-label logreg: numpy)",
    "svm": "numpy (its kernel on the training grid, then scikit-learn's one-vs-rest)",
    "rf": "skl2onnx (a multi-label rf: numpy)",
    "xgb": "onnxmltools (a multi-label xgb: numpy)",
    "fcnn": "torch.onnx",
    "fcnn-weighted": "torch.onnx",
    "attention": "torch.onnx (a track's segments in, the track's scores out)",
    **{
        name: "torch.onnx, its log-mel front end in numpy (audio.logmel; no encoder)"
        for name in SPECTROGRAM_HEADS
    },
}


def export_head(name: str, head, n_features: int, directory: Path) -> dict:
    """Write the head into directory; return its manifest entry (file, runtime, converter)."""
    multi_label = bool(getattr(head, "multi_label_", False))
    if name == "logreg":
        if multi_label:  # one regression per tag, infinite intercepts: no converter takes it
            return _write_npz(directory, "linear", _linear_arrays(head))
        return _write_onnx(directory, _logreg_onnx(head, n_features), "skl2onnx")
    if name == "svm":  # a precomputed grid kernel and a softmax over one-vs-rest: no converter
        return _write_npz(directory, "svm", svm_arrays(head))
    if name in ("fcnn", "fcnn-weighted", *SPECTROGRAM_HEADS):  # log-mel rows for the latter
        return _write_onnx(directory, _torch_onnx(head, n_features), "torch.onnx")
    if name == "attention":  # rows: one track's segments, each answered with the track's scores
        entry = _write_onnx(directory, _attention_onnx(head, n_features), "torch.onnx")
        return entry | {"rows": "one track"}
    if name == "xgb" and not multi_label:
        return _write_onnx(directory, _xgb_onnx(head, n_features), "onnxmltools")
    if name == "xgb":  # binary:logistic with a target per tag: onnxmltools takes one
        return _write_npz(directory, "boosted", boosted_arrays(head))
    if name == "rf" and not multi_label:
        return _write_onnx(directory, _forest_onnx(head, n_features), "skl2onnx")
    if name == "rf":  # one forest with an output per tag: skl2onnx takes one output
        return _write_npz(directory, "forest", forest_arrays(head))
    raise ExportError(
        f"the {name} head{' (multi-label)' if multi_label else ''} has no ONNX export; "
        f"exported are: {'; '.join(f'{k}: {v}' for k, v in EXPORTS.items())}"
    )


def _write_onnx(directory: Path, model_bytes: bytes, converter: str) -> dict:
    atomic_write(directory / HEAD_ONNX, lambda tmp: tmp.write_bytes(model_bytes))
    return {"file": HEAD_ONNX, "runtime": "onnx", "converter": converter}


def _write_npz(directory: Path, kind: str, arrays: dict) -> dict:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # plain arrays: nothing of object dtype, so nothing pickled
    atomic_write(directory / HEAD_NPZ, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return {"file": HEAD_NPZ, "runtime": "numpy", "kind": kind, "converter": None}


def _linear_arrays(head) -> dict:
    """The standardiser and regression of a logreg head: proba from (x - mean) / scale."""
    scaler, regression = head[0], head[-1]
    return {
        "mean": np.asarray(scaler.mean_, np.float64),
        "scale": np.asarray(scaler.scale_, np.float64),
        "coef": np.asarray(regression.coef_, np.float64),
        "intercept": np.asarray(regression.intercept_, np.float64),
    }


def svm_arrays(head) -> dict:
    """SVMHead's standardiser, gamma, support vectors and libsvm's coefficients, as arrays.

    Below max_precomputed training rows the head's kernel is on the exact grid (grid=1); its
    SVCs index the training rows, so each one's coefficients go to its support vectors' rows of
    `vectors` (a multi-label head's tags share them). Public SVC attributes: for two classes
    (and each tag) the decision is dual[0] . K + intercept[0].
    """
    if head.multi_label_:
        svcs = head.svcs_
        if head.precomputed_:
            vectors, rows = (
                head.support_vectors_,
                [np.searchsorted(head.support_, svc.support_) for svc in svcs],
            )
        else:
            vectors = np.concatenate(
                [svc.support_vectors_ for svc in svcs] or [np.zeros((0, len(head.mean_)))]
            )
            ends = np.cumsum([len(svc.support_) for svc in svcs], dtype=int)
            rows = [np.arange(e - len(svc.support_), e) for e, svc in zip(ends, svcs, strict=True)]
        dual = np.zeros((len(svcs), len(vectors)))
        for k, (svc, r) in enumerate(zip(svcs, rows, strict=True)):
            dual[k, r] = svc.dual_coef_[0]
        tagged = {
            "tag_values": np.where(head.tag_rates_ > 0.5, np.inf, -np.inf),
            "fitted_tags": np.asarray(head.fitted_tags_, np.int64),
            "intercept": np.asarray([svc.intercept_[0] for svc in svcs], np.float64),
        }
    else:
        svc = head.svc_
        vectors = head.support_vectors_ if head.precomputed_ else svc.support_vectors_
        dual = svc.dual_coef_
        tagged = {"n_support": np.asarray(svc.n_support_, np.int64),
                  "intercept": np.asarray(svc.intercept_, np.float64)}  # fmt: skip
    return {
        "mean": np.asarray(head.mean_),
        "scale": np.asarray(head.scale_),
        "gamma": np.float64(head.gamma_),
        "grid": np.int64(bool(head.precomputed_)),
        "vectors": np.asarray(vectors, np.float32),
        "dual": np.asarray(dual, np.float64),
        **tagged,
    }


def forest_arrays(head) -> dict:
    """A multi-label ForestHead's trees as arrays: every tree's nodes one after another.

    left/right index the next node (-1 at a leaf); leaf holds, per node and tag, the tag's
    probability as the tree gives it (its class counts normalised, the column of value 1, 0 for
    a tag never seen) and roots each tree's first node.
    """
    left, right, feature, threshold, leaf, roots, offset = [], [], [], [], [], [], 0
    for tree in head.estimators_:
        t = tree.tree_
        leaves = t.children_left < 0
        left.append(np.where(leaves, -1, t.children_left + offset))
        right.append(np.where(leaves, -1, t.children_right + offset))
        feature.append(t.feature)
        threshold.append(t.threshold)
        tags = np.zeros((t.node_count, len(head.tag_classes_)))
        for k, values in enumerate(head.tag_classes_):
            counts = t.value[:, k, : len(values)]
            normalizer = counts.sum(axis=1)[:, None]
            normalizer[normalizer == 0.0] = 1.0
            tags[:, k] = (counts / normalizer)[:, np.asarray(values) == 1].sum(axis=1)
        leaf.append(tags)
        roots.append(offset)
        offset += t.node_count
    return {
        "left": np.concatenate(left).astype(np.int64),
        "right": np.concatenate(right).astype(np.int64),
        "feature": np.concatenate(feature).astype(np.int64),
        "threshold": np.concatenate(threshold).astype(np.float64),
        "leaf": np.concatenate(leaf),
        "roots": np.asarray(roots, np.int64),
    }


def boosted_arrays(head) -> dict:
    """A multi-label XGBHead's trees (from the booster's JSON) as arrays, as forest_arrays's.

    value holds each leaf's value, target each tree's tag and base_margin each tag's starting
    margin (the logit of XGBoost's base_score); a split goes left where x < threshold.
    """
    import json

    learner = json.loads(head.booster_.get_booster().save_raw("json"))["learner"]
    model = learner["gradient_booster"]["model"]
    base = np.asarray(json.loads(learner["learner_model_param"]["base_score"]), np.float32)
    left, right, feature, threshold, roots, offset = [], [], [], [], [], 0
    for tree in model["trees"]:
        lc, rc = np.asarray(tree["left_children"]), np.asarray(tree["right_children"])
        leaves = lc < 0
        left.append(np.where(leaves, -1, lc + offset))
        right.append(np.where(leaves, -1, rc + offset))
        feature.append(tree["split_indices"])
        threshold.append(tree["split_conditions"])  # at a leaf: its value
        roots.append(offset)
        offset += len(lc)
    threshold = np.concatenate(threshold).astype(np.float32)
    with np.errstate(divide="ignore"):  # a tag never seen in training: base 0, margin -inf
        base_margin = np.log(base / (1 - base)).astype(np.float32)
    return {
        "left": np.concatenate(left).astype(np.int64),
        "right": np.concatenate(right).astype(np.int64),
        "feature": np.concatenate(feature).astype(np.int64),
        "threshold": threshold,
        "value": threshold,
        "roots": np.asarray(roots, np.int64),
        "target": np.asarray(model["tree_info"], np.int64),
        "base_margin": base_margin,
    }


def _forest_onnx(head, n_features: int) -> bytes:
    """skl2onnx on a plain RandomForestClassifier holding the head's fitted trees."""
    from sklearn.ensemble import RandomForestClassifier

    plain = RandomForestClassifier()
    plain.__dict__.update(head.__dict__)
    return _sklearn_onnx(plain, plain, n_features)


def _sklearn_onnx(model, classifier, n_features: int) -> bytes:
    """skl2onnx on a plain scikit-learn model: probabilities as one float tensor (no zipmap)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        model,
        initial_types=[("embedding", FloatTensorType([None, n_features]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        final_types=[("label", None), ("probabilities", FloatTensorType([None, None]))],
    )
    return onx.SerializeToString()


def _logreg_onnx(head, n_features: int) -> bytes:
    """skl2onnx on a plain scikit-learn Pipeline holding the head's fitted parameters."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    # The head's classes are subclasses skl2onnx does not know; the plain class with the same
    # fitted attributes computes the same probabilities (checked by the export).
    plain = LogisticRegression()
    plain.__dict__.update(head[-1].__dict__)
    pipeline = Pipeline([("standardscaler", head[0]), ("logisticregression", plain)])
    return _sklearn_onnx(pipeline, plain, n_features)


def _xgb_onnx(head, n_features: int) -> bytes:
    """onnxmltools' XGBoost converter on the head's booster."""
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = convert_xgboost(
        head.booster_,
        initial_types=[("embedding", FloatTensorType([None, n_features]))],
        target_opset=XGB_OPSET,
    )
    probabilities = onx.graph.output[1].name
    return _renamed_output(onx, probabilities, "probabilities").SerializeToString()


def _renamed_output(onx, old: str, new: str):
    """The model with graph output `old` renamed `new` (every node that reads or writes it)."""
    for node in onx.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for out in onx.graph.output:
        if out.name == old:
            out.name = new
    return onx


def _hold_head(module, head) -> None:
    """Give a torch wrapper the head's network and its standardiser (buffers: they export)."""
    import torch

    module.net = head.net_
    module.register_buffer("mean", torch.from_numpy(np.asarray(head.mean_, np.float32)))
    module.register_buffer("scale", torch.from_numpy(np.asarray(head.scale_, np.float32)))


def _torch_onnx(head, n_features: int) -> bytes:
    """A torch head with its standardiser and its softmax (sigmoid for tags), via torch.onnx."""
    import torch

    class Scored(torch.nn.Module):
        def __init__(self):
            super().__init__()
            _hold_head(self, head)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return head._probabilities(self.net((x - self.mean) / self.scale))

    return torch_to_onnx(
        Scored().eval(), (torch.zeros(2, n_features),), ["embedding"], ["probabilities"]
    )


def _attention_onnx(head, n_features: int) -> bytes:
    """The attention head over one track's segments [segments, features] (a dynamic axis): each
    row gets the track's probabilities, as AttentionPoolingClassifier.predict_proba gives them."""
    import torch

    class Track(torch.nn.Module):
        def __init__(self):
            super().__init__()
            _hold_head(self, head)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.net.encode(((x - self.mean) / self.scale)[None])  # [1, segments, hidden]
            weights = torch.softmax(self.net.score(h).squeeze(-1), dim=1)  # all rows are real
            track = head._probabilities(self.net.out((weights.unsqueeze(-1) * h).sum(dim=1)))
            return track.expand(x.shape[0], -1)

    axes = {"embedding": {0: "segments"}, "probabilities": {0: "segments"}}
    example = (torch.zeros(3, n_features).normal_(generator=torch.Generator().manual_seed(0)),)
    return torch_to_onnx(Track().eval(), example, ["embedding"], ["probabilities"], axes)


def torch_to_onnx(
    module, example: tuple, inputs: list[str], outputs: list[str], dynamic: dict | None = None
) -> bytes:
    """module as ONNX bytes (TorchScript exporter, opset OPSET); batch axes dynamic by default."""
    import torch

    axes = dynamic or {n: {0: "batch"} for n in inputs + outputs}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter's deprecation and tracer warnings say nothing to a user.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            buffer,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()
