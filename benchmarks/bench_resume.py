"""Resume after a kill: final metrics of a killed-and-restarted run vs an uninterrupted one.

    .venv/bin/python benchmarks/bench_resume.py [--epochs 4] [--max-examples 12000]

Runs `keras_hier.recipes.train` (small CNN, ProxyDR, Fashion-MNIST: tfds or Debian's IDX
files) three times with the same seed: twice uninterrupted (the spread of two
identical runs is the noise floor) and once SIGKILLed in the middle of epoch 2 and
restarted with the same command. Writes the `resume` section of BENCHMARKS.md.
"""

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import machine_line, write_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(out, args):
    return [sys.executable, "-m", "keras_hier.recipes.train", "--dataset", "fashion_mnist", "--head", "proxydr",
            "--epochs", str(args.epochs), "--max-examples", str(args.max_examples), "--seed", "0",
            "--no-export", "--no-figures", "--n-permutations", "20", "--verbose", "2", "--out", out]


def epochs_done(out):
    path = os.path.join(out, "history.csv")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(out, "report", "results.json")) as f:
        r = json.load(f)
    return {"test accuracy": s["test_accuracy"], "mistake severity": r["classification"]["mistake_severity"],
            "AHD@5": r["classification"]["ahd_at_k"],
            "Spearman classwise (W)": r["inference"]["W"]["spearman_classwise"],
            "epochs in history": epochs_done(out)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-examples", type=int, default=12000)
    args = parser.parse_args()
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    work = tempfile.mkdtemp(prefix="bench_resume_")
    results = {}
    try:
        for name in ("uninterrupted A", "uninterrupted B"):
            out = os.path.join(work, name.replace(" ", "_"))
            subprocess.run(command(out, args), cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
            results[name] = summary(out)
        out = os.path.join(work, "killed")
        process = subprocess.Popen(command(out, args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        while epochs_done(out) < 1:
            if process.poll() is not None:
                raise RuntimeError("the run ended before it could be killed")
            time.sleep(0.2)
        epoch_start = time.time()
        time.sleep(float(os.environ.get("KILL_AFTER", "3")))  # well inside epoch 2
        kill_delay = time.time() - epoch_start
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_after = epochs_done(out)
        subprocess.run(command(out, args), cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        results["killed + resumed"] = summary(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = list(results)
    keys = list(results[names[0]])
    lines = ["## Resume after a kill (`recipes/train.py`)", "",
             f"Small CNN + ProxyDR on Fashion-MNIST ({args.max_examples} training images, {args.epochs} epochs, "
             f"seed 0). The third run was SIGKILLed {kill_delay:.0f} s into epoch 2 "
             f"(after {killed_after} finished epoch(s)) and restarted with the same command; it resumed from "
             "the last per-epoch backup. Two uninterrupted runs with the same seed give the noise floor. "
             "The resumed run skips the epochs it had finished (the data pipeline's shuffle and augmentation "
             "state advance as before, see `keras_hier.recipes.train.epoch_stream`), so it trains on the same batches "
             "from the same restored weights and optimizer state.", "",
             "| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{results[n][key]:.4f}" if isinstance(results[n][key], float)
                                                 else str(results[n][key]) for n in names) + " |")
    lines += ["", f"Command: `.venv/bin/python benchmarks/bench_resume.py --epochs {args.epochs} "
              f"--max-examples {args.max_examples}`", "", f"Machine: {machine_line()}"]
    text = "\n".join(lines)
    print(text)
    write_section("resume", text)


if __name__ == "__main__":
    main()
