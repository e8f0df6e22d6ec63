"""Copies a finished run's model into ``pretrained/<name>/`` with a manifest of its files.

  python experiments/export_pretrained.py --workdir=runs/charged_cpu --name=charged_cpu

What is copied: ``run.json`` (the run describes itself: config, normalisation, the module ->
relation map, its training data's fingerprint), ``results.json`` (what it scored on its own
test split) and the latest checkpoint only. ``MANIFEST.json`` lists every file with its size
and SHA-256; ``tests/test_pretrained.py`` checks the files against it, restores the
checkpoint and scores it. Evaluate an exported model like any run::

  python experiments/evaluate.py --workdir=pretrained/charged_cpu --data_dir=data/charged_10k

Refuses an existing destination (a model is never overwritten) and a model over
``--max_bytes`` (2 MB: a 64-wide CPU model with its optimiser state and training
structures is ~0.6 MB).
"""

import hashlib
import json
import os
import shutil

from absl import flags

MANIFEST = "MANIFEST.json"


def file_digests(folder: str) -> dict[str, dict]:
    """``{relative path: {"bytes": size, "sha256": hex}}`` of every file under ``folder``
    except the manifest, sorted by path."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel == MANIFEST:
                continue
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            found[rel] = {"bytes": os.path.getsize(path), "sha256": digest}
    return dict(sorted(found.items()))


def latest_step(workdir: str) -> int:
    """The highest finalised checkpoint step of a run (Orbax names them by step)."""
    path = os.path.join(workdir, "checkpoints")
    steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
    if not steps:
        raise FileNotFoundError(f"{workdir} has no finished checkpoint")
    return max(steps)


def export(workdir: str, dest: str, max_bytes: int) -> dict:
    """Copies ``workdir``'s model to ``dest`` and writes its manifest; returns the manifest."""
    if os.path.exists(dest):
        raise FileExistsError(f"{dest} exists: an exported model is never overwritten")
    for name in ("run.json", "results.json"):
        if not os.path.exists(os.path.join(workdir, name)):
            raise FileNotFoundError(f"{workdir} has no {name}: export a finished run")
    step = latest_step(workdir)
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        if json.load(f).get("train_steps") != step:
            raise ValueError(f"{workdir}'s results are not from its latest checkpoint ({step})")
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "checkpoints"))
    for name in ("run.json", "results.json"):
        shutil.copy2(os.path.join(workdir, name), tmp)
    shutil.copytree(
        os.path.join(workdir, "checkpoints", str(step)),
        os.path.join(tmp, "checkpoints", str(step)),
    )
    files = file_digests(tmp)
    total = sum(f["bytes"] for f in files.values())
    if total > max_bytes:
        shutil.rmtree(tmp)
        raise ValueError(f"the model takes {total} bytes, over --max_bytes={max_bytes}")
    manifest = {"source": os.path.abspath(workdir), "step": step, "bytes": total, "files": files}
    with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.rename(tmp, dest)
    return manifest


def _define_flags() -> None:
    """The command's flags (defined only when run: tests import this module's functions
    beside other scripts' flags)."""
    flags.DEFINE_string("workdir", None, "The finished run's folder.", required=True)
    flags.DEFINE_string("name", None, "Name under pretrained/ (the flagfile's).", required=True)
    flags.DEFINE_string("root", "pretrained", "Folder of the exported models.")
    flags.DEFINE_integer("max_bytes", 2_000_000, "Refuse a model larger than this.")


def main(argv):
    del argv
    f = flags.FLAGS
    dest = os.path.join(f.root, f.name)
    manifest = export(f.workdir, dest, f.max_bytes)
    print(
        f"exported step {manifest['step']} of {f.workdir} to {dest} ({manifest['bytes']} "
        f"bytes, {len(manifest['files'])} files)"
    )


if __name__ == "__main__":
    from nri_modular import cli

    _define_flags()
    cli.run_main(main)
