"""Whether temperature scaling fitted on k held-out tracks helps on the real dev clips: the 60
GTZAN dev clips embedded with whisper-base (`make demo`'s cache, else embedded here), layer 2.

Nested and grouped by artist. Outer: 5-fold stratified group k-fold by artist, 6 repeats
(GTZAN's blues, classical, reggae and rock are one artist each, so those 24 tracks always train
and the 36 tracks of the other 6 genres are the ones tested). Inside each outer fold, three
ways to get the calibration tracks, the temperature always fitted by the project's
`fit_calibrator` and the outer-test tracks scored before and after it:

- own_head_per_k: for each k, k outer-train tracks of the tested genres, whole artists in a
  random order (an artist that would take a genre's last training track is skipped; the rest
  of a partly used artist is dropped, never trained on), are held out and the head is fitted
  on the others: what a validation split of k tracks costs and gives ("0": no split);
- one_head_all_k: one pool of 20 such tracks and one head fitted on the rest; the temperature
  on k of the pool, so only the calibration-set size changes between the ks;
- out_of_fold: what `--selection cv` does: the temperature fitted on the inner folds'
  held-out predictions of the outer-train tracks, the head refitted on all of them.

A unit is one (repeat, draw): the 36 tested tracks of its 5 outer folds pooled, their ECE (15
bins), mean negative log-likelihood and accuracy before and after (a temperature never changes
accuracy). Per k: the mean change, a bootstrap 95 % interval over units, and how many units it
helped, with Wilson's interval. Units share tracks and artists, so both intervals are narrower
than independent data would give: 60 clips (36 tested, 24 artists) can show the sign and rough
size of an effect of this head on these genres, not a threshold to better than about 5 tracks,
nor anything about other labels or larger training sets.

    python benchmarks/calibration_dev_clips.py   # writes benchmarks/results/calibration_dev_clips.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (5, 10, 15, 20)
REPEATS = 6
DRAWS = 4
LAYER = 2
BOOTSTRAP = 2000


def load():
    """Layer-2 segment features, segment tracks and labels, track labels, folds."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from artist_folds import artist_folds
    from selection_regret import dev_original_segments

    tracks, seg_track, every = dev_original_segments()
    X = every[:, LAYER, :]
    f = artist_folds(tracks, REPEATS)  # folds: positions into f.ok
    y_seg = f.segment_labels(seg_track, tracks)
    return X, seg_track, y_seg, f.ok, f.y_track, f.groups, f.tested, f.labels, f.alone, f.folds


def held_out(train_pos, y_track, groups, tested, k, rng) -> tuple[np.ndarray, np.ndarray]:
    """(k calibration positions, the positions left to train): whole artists, random order."""
    candidates = train_pos[tested[train_pos]]
    order = rng.permutation(np.unique(groups[candidates]))
    left = {c: int((y_track[train_pos] == c).sum()) for c in np.unique(y_track)}
    cal, dropped = [], []
    for g in order:
        members = candidates[groups[candidates] == g]
        if any(left[c] <= (y_track[members] == c).sum() for c in np.unique(y_track[members])):
            continue  # it would leave a genre with no training track
        take = members[: k - len(cal)]
        cal.extend(take)
        dropped.extend(members[len(take) :])
        for c in y_track[members]:
            left[c] -= 1
        if len(cal) == k:
            break
    keep = ~np.isin(train_pos, np.concatenate([cal, dropped]).astype(int))
    return np.array(cal, dtype=int), train_pos[keep]


def nll(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-track negative log-likelihood of the true label (scores clipped at 1e-12)."""
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))


def scorer(head: str, data):
    """fit_score(train positions, [positions to score]) -> [(track scores, track labels)]."""
    from wav2genre_cache.heads.registry import Rows, head_spec
    from wav2genre_cache.stage_two.scoring import head_scores

    X, seg_track, y_seg, ok, _, _, _, labels, _, _ = data
    spec = head_spec(head)

    def fit_score(train_pos, score_pos):
        fit = np.isin(seg_track, ok[train_pos])
        model = spec.fit(spec.make(0), Rows(X[fit], y_seg[fit], seg_track[fit]))
        out = []
        for pos in score_pos:
            r = np.isin(seg_track, ok[pos])
            s = head_scores(spec, model, X[r], y_seg[r], seg_track[r], len(labels), False)
            out.append((s.track, s.y_track))
        return out

    return fit_score


def run_out_of_fold(head: str, data) -> dict:
    """What `--selection cv` does: the temperature fitted on inner-fold held-out predictions
    of the outer-train tracks, the head refitted on all of them."""
    from wav2genre_cache.evaluation.calibration import fit_calibrator
    from wav2genre_cache.stage_two.folds import grouped_folds

    _, _, _, _, y_track, groups, tested, _, _, folds = data
    fit_score = scorer(head, data)
    units: dict = {}
    for i, (train_pos, test_pos) in enumerate(folds):
        inner = grouped_folds(y_track[train_pos], groups[train_pos], tested[train_pos], 5, 1, i)
        oof = [fit_score(train_pos[a], [train_pos[b]])[0] for a, b in inner]
        pc, yc = np.concatenate([p for p, _ in oof]), np.concatenate([y for _, y in oof])
        ((pt, yt),) = fit_score(train_pos, [test_pos])
        cal = fit_calibrator(pc, yc, False, method="temperature")
        units.setdefault(("out_of_fold", 0, i // 5), []).append(
            (pt, cal.apply(pt), yt, cal.temperature, len(yc), len(train_pos))
        )
    return summarise(units)


def run_head(head: str, data, fixed_head: bool) -> dict:
    """Every (outer fold, k, draw): fit, calibrate, score the outer-test tracks."""
    from wav2genre_cache.evaluation.calibration import fit_calibrator

    _, _, _, _, y_track, groups, tested, _, _, folds = data
    fit_score = scorer(head, data)

    # units[(k, draw, repeat)] -> list of (p_before, p_after, y, temperature, n_cal, n_train)
    units: dict = {}
    for i, (train_pos, test_pos) in enumerate(folds):
        repeat = i // 5
        if not fixed_head:
            ((p, y),) = fit_score(train_pos, [test_pos])
            units.setdefault((0, 0, repeat), []).append((p, p, y, 1.0, 0, len(train_pos)))
        for d in range(DRAWS):
            if fixed_head:  # one pool of max(SIZES) tracks and one head; k of the pool calibrate
                rng = np.random.default_rng([i, d])
                pool, fit_pos = held_out(train_pos, y_track, groups, tested, max(SIZES), rng)
                (pc, yc), (pt, yt) = fit_score(fit_pos, [pool, test_pos])
            for k in SIZES:
                if fixed_head:
                    pick = rng.choice(len(yc), min(k, len(yc)), replace=False)
                    cal_p, cal_y, n_cal = pc[pick], yc[pick], len(pick)
                else:  # its own held-out tracks and head for each k
                    rng = np.random.default_rng([i, k, d])
                    cal_pos, fit_pos = held_out(train_pos, y_track, groups, tested, k, rng)
                    (cal_p, cal_y), (pt, yt) = fit_score(fit_pos, [cal_pos, test_pos])
                    n_cal = len(cal_pos)
                cal = fit_calibrator(cal_p, cal_y, False, method="temperature")
                units.setdefault((k, d, repeat), []).append(
                    (pt, cal.apply(pt), yt, cal.temperature, n_cal, len(fit_pos))
                )
    return summarise(units)


def summarise(units: dict) -> dict:
    """Per k: before/after means, mean change with bootstrap interval, share helped."""
    from wav2genre_cache.evaluation.calibration import expected_calibration_error
    from wav2genre_cache.evaluation.intervals import wilson_interval

    per_k: dict = {}
    for (k, _, _), parts in units.items():
        p0 = np.concatenate([a[0] for a in parts])
        p1 = np.concatenate([a[1] for a in parts])
        y = np.concatenate([a[2] for a in parts])
        row = per_k.setdefault(k, {m: [] for m in ("ece0", "ece1", "nll0", "nll1", "acc", "t")})
        row["ece0"].append(expected_calibration_error(p0, y, False))
        row["ece1"].append(expected_calibration_error(p1, y, False))
        row["nll0"].append(float(nll(p0, y).mean()))
        row["nll1"].append(float(nll(p1, y).mean()))
        row["acc"].append(float((p0.argmax(1) == y).mean()))
        row["t"].extend(a[3] for a in parts)
        row.setdefault("n_cal", []).extend(a[4] for a in parts)
        row.setdefault("n_train", []).extend(a[5] for a in parts)
        row["n_test"] = len(y)
    out = {}
    rng = np.random.default_rng(0)
    for k in sorted(per_k, key=lambda k: (isinstance(k, str), k)):
        r = {m: np.array(v) for m, v in per_k[k].items() if m != "n_test"}
        entry = {
            "units": len(r["ece0"]),
            "test_tracks_per_unit": per_k[k]["n_test"],
            "train_tracks_mean": round(float(r["n_train"].mean()), 1),
            "accuracy": round(float(r["acc"].mean()), 3),
            "ece_before": round(float(r["ece0"].mean()), 4),
            "nll_before": round(float(r["nll0"].mean()), 4),
        }
        if k:
            n = len(r["ece0"])
            for m in ("ece", "nll"):
                diff = r[m + "1"] - r[m + "0"]
                boot = diff[rng.integers(0, n, (BOOTSTRAP, n))].mean(axis=1)
                helped = int((diff < 0).sum())
                low, high = wilson_interval(helped, n)
                entry[m + "_after"] = round(float(r[m + "1"].mean()), 4)
                entry[m + "_change"] = round(float(diff.mean()), 4)
                entry[m + "_change_ci95"] = [
                    round(float(np.percentile(boot, q)), 4) for q in (2.5, 97.5)
                ]
                entry[m + "_helped"] = [helped, n]
                entry[m + "_helped_ci95"] = [round(low, 3), round(high, 3)]
            entry["calibration_tracks_mean"] = round(float(r["n_cal"].mean()), 1)
            entry["temperature_median"] = round(float(np.median(r["t"])), 3)
            entry["temperature_p10_p90"] = [
                round(float(np.percentile(r["t"], q)), 3) for q in (10, 90)
            ]
        out[str(k)] = entry
        print(k, json.dumps(entry), flush=True)
    return out


def main() -> None:
    """Run the measurement for each head and write it."""
    heads = sys.argv[1:] or ["logreg", "fcnn"]
    data = load()
    result = {
        "command": "python benchmarks/calibration_dev_clips.py",
        "model": "pip:whisper-base, layer 2",
        "clips": f"GTZAN dev clips ({len(data[3])}); {int(data[6].sum())} tracks of "
        f"{len(data[7]) - len(data[8])} genres tested, one-artist genres always train",
        "train_only_labels": data[8],
        "design": f"outer 5-fold x {REPEATS} repeats by artist; own_head_per_k: per outer "
        f"fold, k and each of {DRAWS} draws, k artist-grouped outer-train tracks held out for "
        "the temperature and the head fitted on the rest ('0': none held out); one_head_all_k: "
        "one head, the temperature on k of one held-out pool of 20; out_of_fold: the "
        "temperature on inner 5-fold held-out predictions, the head refitted on all outer-train "
        "tracks. A unit is one (repeat, draw) pooling its 36 test tracks; bootstrap "
        f"({BOOTSTRAP}) over units; units share tracks",
        "heads": {},
    }
    for head in heads:
        start = time.perf_counter()
        print(head, flush=True)
        result["heads"][head] = {
            "own_head_per_k": run_head(head, data, False),
            "one_head_all_k": run_head(head, data, True),
            "out_of_fold": run_out_of_fold(head, data),
            "seconds": round(time.perf_counter() - start, 1),
        }
    out = ROOT / "benchmarks" / "results" / "calibration_dev_clips.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
