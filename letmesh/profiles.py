"""``letmesh profile``: the controller's profile store, a re-run on demand, and the interference fit."""

from __future__ import annotations

import random
import time
from collections import defaultdict

from controller.planning import InterferenceModel
from controller.replanner import colocation_samples, profile_table
from letmesh.status import ask_controller
from protocol.message import GetProfiles, ProfilesReply
from protocol.schema import to_plain


def fetch_profiles(controller: str, *, rerun: bool = False, timeout_s: float = 3.0, keys_dir=None) -> ProfilesReply:
    return ask_controller(controller, GetProfiles(rerun=rerun), ProfilesReply, timeout_s, keys_dir)


def wait_for_profiles(controller: str, *, timeout_s: float, say=print, keys_dir=None) -> ProfilesReply:
    """Poll until no profiling run is in progress, printing progress as it changes."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        reply = fetch_profiles(controller, keys_dir=keys_dir)
        if reply.running != last:
            say("profiling: " + (", ".join(reply.running) if reply.running else "done"))
            last = reply.running
        if not reply.running or time.monotonic() > deadline:
            return reply
        time.sleep(1.0)


def interference_error(reply: ProfilesReply, *, holdout: float = 0.25, seed: int = 0) -> dict | None:
    """Fit the interference model on most co-location pairs; its error on the held-out rest."""
    samples = colocation_samples(reply.colocations)
    if len(samples) < 8:
        return None
    rng = random.Random(seed)
    order = list(range(len(samples)))
    rng.shuffle(order)
    cut = max(1, int(len(samples) * holdout))
    held = [samples[i] for i in order[:cut]]
    train = [samples[i] for i in order[cut:]]
    model = InterferenceModel.fit(train, table=profile_table(reply.samples))
    return {"train": len(train), "held_out": len(held), **model.error(held)}


def profiles_json(reply: ProfilesReply) -> dict:
    """The profile store as plain data for ``--json``, with the interference fit (null until enough pairs)."""
    return {"samples": to_plain(reply.samples), "colocations": to_plain(reply.colocations),
            "running": list(reply.running), "interference_fit": interference_error(reply)}


def format_profiles(reply: ProfilesReply) -> str:
    lines = ["PROFILES (ms)", f"  {'variant':<16} {'device':<8} {'part':>4} {'batch':>5} {'p50':>9} {'p99':>9} {'runs':>5}"]
    for s in reply.samples:
        lines.append(f"  {s.variant:<16} {s.device_kind:<8} {s.partition:>4} {s.batch:>5} {s.p50_ms:>9.3f} "
                     f"{s.p99_ms:>9.3f} {s.runs:>5}")
    if not reply.samples:
        lines.append("  (none yet)")
    lines += ["", "CO-LOCATION (slowdown = shared p50 / solo p50)"]
    by_variant = defaultdict(list)
    for c in reply.colocations:
        if c.solo_p50_ms > 0:
            by_variant[(c.device_kind, c.variant)].append(c.shared_p50_ms / c.solo_p50_ms)
    for (kind, variant), values in sorted(by_variant.items()):
        lines.append(f"  {variant:<16} {kind:<8} pairs {len(values):>3}  mean {sum(values) / len(values):.2f}x  "
                     f"max {max(values):.2f}x")
    if not by_variant:
        lines.append("  (none yet)")
    fit = interference_error(reply)
    if fit is not None:
        lines += ["", f"interference model: fitted on {fit['train']} pairs, error on {fit['held_out']} held-out pairs: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in fit.items() if k not in ("train", "held_out")
                                  and isinstance(v, float))]
    if reply.running:
        lines += ["", "running: " + ", ".join(reply.running)]
    return "\n".join(lines)
