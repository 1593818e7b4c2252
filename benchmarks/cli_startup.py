"""How long the command line takes to answer ``--help``: each command in a fresh process, as a user
types it, several times; prints one JSON object with the median and the spread in seconds.

    .venv/bin/python benchmarks/cli_startup.py [--runs 5] [--lvseg .venv/bin/lvseg]

The commands' parsers import no TensorFlow or TFX (tests/test_layout.py checks that); this
measures what that buys. Compare two trees by pointing ``--lvseg`` at each one's entry point.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = (["--help"], ["serve", "--help"], ["predict", "--help"], ["run", "--help"],
            ["kubeflow", "compile", "--help"])


def time_command(lvseg: str, command, runs: int):
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.run([lvseg, *command], capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        if process.returncode != 0:
            raise RuntimeError(f"{lvseg} {' '.join(command)} failed: {process.stderr[-500:]}")
    return {"median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3),
            "stderr_lines": len(process.stderr.splitlines())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lvseg", default=os.path.join(os.path.dirname(sys.executable), "lvseg"))
    args = parser.parse_args(argv)
    results = {" ".join(["lvseg", *command]): time_command(args.lvseg, command, args.runs)
               for command in COMMANDS}
    print(json.dumps({"benchmark": "cli_startup", "runs": args.runs,
                      "load_average_1min": round(os.getloadavg()[0], 2),
                      "commands": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
