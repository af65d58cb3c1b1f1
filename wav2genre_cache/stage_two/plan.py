"""Stage two's plan: which heads train on which feature sets and layers, before anything fits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from wav2genre_cache._io import comma_list
from wav2genre_cache.errors import TrainError
from wav2genre_cache.feature_sets import ENCODER, HANDCRAFTED, LOGMEL, feature_set_name
from wav2genre_cache.heads.registry import ALL_HEADS, HEADS, Inputs, head_spec, heads_reading
from wav2genre_cache.stage_two.data import EVERY_LAYER, TrainingData, parse_layers, probe_best_layer

VECTOR_FEATURE_SETS = (ENCODER, HANDCRAFTED)  # in order of preference


@dataclass(frozen=True)
class Job:
    """One head to fit on one layer of a feature set (EVERY_LAYER: on all of them at once)."""

    head: str
    layer: int


def requested_heads(heads: list[str] | tuple[str, ...] | None) -> list[str]:
    """The heads to train: those named (each known), or the default heads for None."""
    names = list(HEADS if heads is None else heads)
    unknown = [h for h in names if h not in ALL_HEADS]
    if unknown or not names:
        raise TrainError(f"unknown head(s) {unknown}; available: {', '.join(ALL_HEADS)}")
    return names


def requested_feature_sets(feature_sets: str | list[str] | tuple[str, ...]) -> list[str]:
    """Feature set names from a comma-separated string or a list, old names made current."""
    if isinstance(feature_sets, str):
        feature_sets = list(comma_list(feature_sets))
    return [feature_set_name(f) for f in feature_sets]


def plan_jobs(
    data: TrainingData, heads: list[str], layers: str, log: Callable[[str], None]
) -> tuple[list[Job], list[float] | None]:
    """The fits of one feature set: each per-layer head on each chosen layer, then the heads
    that weigh all layers, once. Also the layer probe's scores, where --layers best ran it."""
    probe = None
    chosen = parse_layers(layers, data.n_layers)
    if chosen == "all":
        chosen = list(range(data.n_layers))
    elif chosen == "best" and data.n_layers == 1:
        chosen = [0]  # nothing to choose: no probe (on a log-mel set it held a rows x rows gram)
    elif chosen == "best":
        best_layer, probe = probe_best_layer(data)
        log(
            f"{data.feature_set} layer probe (validation accuracy per layer): "
            f"{', '.join(f'{x:.2f}' for x in probe)} -> layer {best_layer}"
        )
        chosen = [best_layer]
    jobs = [Job(h, layer) for layer in chosen for h in heads_for(data.feature_set, heads)]
    if data.feature_set != LOGMEL and data.n_layers > 1:
        every = [h for h in heads if head_spec(h).inputs is Inputs.ALL_LAYERS]
        jobs += [Job(h, EVERY_LAYER) for h in every]
    return jobs, probe


def heads_for(feature_set: str, heads) -> list[str]:
    """The per-layer heads of `heads` that train on a feature set: log-mel images or vectors.

    A logmel feature set that none of `heads` trains on gets all the spectrogram heads (what
    `run --features ...,logmel` does with the default heads); feature_sets_for has made sure
    that every head asked for has a feature set to train on.
    """
    spectrogram = heads_reading(Inputs.SPECTROGRAM)
    if feature_set == LOGMEL:
        return [h for h in heads if h in spectrogram] or list(spectrogram)
    per_segment = (Inputs.VECTOR, Inputs.SEGMENTS)
    return [h for h in heads if head_spec(h).inputs in per_segment]


def feature_sets_for(
    heads: list[str] | None,
    feature_sets,
    layers_of: dict[str, int],
    log: Callable[[str], None] = print,
) -> list[str]:
    """The feature sets to train on: those asked for, plus those the heads asked for need.

    cnn, lstm and cnn-lstm train on logmel; the other heads on a vector set (encoder, else
    handcrafted), fcnn-weighted on one of several layers. A head whose feature set the run
    lacks trains on the cache's (`layers_of`: the cache's feature sets and their layer counts),
    and if the cache lacks it too, TrainError names the feature set to embed: a head asked for
    is never dropped without a word. A feature set that none of the heads trains on is left
    out, with a word. `heads` None (the default heads) asks for no head in particular.
    """
    plan = list(dict.fromkeys(feature_sets))
    if not plan:
        raise TrainError("no feature set to train on; name one or more, e.g. encoder")
    asked = [] if heads is None else list(dict.fromkeys(heads))
    held = sorted(layers_of)

    def fits(head: str, fs: str) -> bool:
        inputs = head_spec(head).inputs
        if inputs is Inputs.SPECTROGRAM:
            return fs == LOGMEL
        # A set the cache lacks passes here; load_training_data then says that it is missing.
        several = inputs is not Inputs.ALL_LAYERS or layers_of.get(fs, 2) > 1
        return fs in VECTOR_FEATURE_SETS and several

    for head in asked:
        if any(fits(head, fs) for fs in plan):
            continue
        found = [fs for fs in (LOGMEL, *VECTOR_FEATURE_SETS) if fs in held and fits(head, fs)]
        if not found:
            inputs = head_spec(head).inputs
            if inputs is Inputs.SPECTROGRAM:
                need, add = "the logmel feature set", LOGMEL
            elif inputs is Inputs.ALL_LAYERS:
                need, add = "the layers of the encoder feature set", ENCODER
            else:
                need, add = "a vector feature set (encoder or handcrafted)", ENCODER
            embed_with = ",".join(dict.fromkeys([*held, add]))
            raise TrainError(
                f"head {head} trains on {need}, which this cache does not hold; "
                f"re-run embed with --features {embed_with}"
            )
        log(f"head {head} trains on {found[0]}, which the cache holds: training on {found[0]} too")
        plan.append(found[0])

    def trains_on(fs: str) -> bool:
        # logmel always has heads (heads_for), and HEADS all train on vectors; a set of another
        # name stays for load_training_data to refuse.
        return not asked or fs not in VECTOR_FEATURE_SETS or any(fits(h, fs) for h in asked)

    for fs in [fs for fs in plan if not trains_on(fs)]:
        log(f"{fs}: none of the heads asked for ({', '.join(asked)}) trains on it; left out")
        plan.remove(fs)
    return plan
