"""Stress the hung-player path: stop a player (SIGSTOP) at a random moment of a running loop, many times.

    python tests/runtime/stress_hang.py [--player server0] [--rounds 10] [--hang-timeout 4] [--kill] [--load N]

Four `tfe-lite serve` players and a driver (tests/runtime/driver.py, mode "faults") on free 127.0.0.1
ports. Each round: the driver loops on private matmuls, the player is stopped 0.2-1.5 s in, the seconds to
the driver's error are printed with its first words, the player is resumed (SIGCONT) and the next
computation must succeed. A round with no error within 40 s (``--wait``) is reported as a hang and ends the run (exit 1).
``--kill``: the player is killed (SIGKILL) instead and started again before the next computation.
``--load N``: N busy loops run beside the cluster for the whole run (a loaded machine).
Not part of the suite (a run takes about 15 s a round); the fault test stops a player once.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import Processes, write_cluster  # noqa: E402
from scenarios import PLAYERS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--player", default="server0", choices=["server0", "server1", "crypto-producer", "alice"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--hang-timeout", type=float, default=4.0)
    parser.add_argument("--kill", action="store_true", help="SIGKILL and restart the player instead of SIGSTOP/SIGCONT")
    parser.add_argument("--load", type=int, default=0, metavar="N", help="busy loops beside the cluster")
    parser.add_argument("--wait", type=float, default=40.0, help="seconds a round may take to end in an error")
    args = parser.parse_args()
    hangs = failed_after = 0
    # the driver lives through every round: its error (--wait), the restart and the next computation (40 s)
    os.environ["TFE_DRIVER_BUDGET"] = str(120 + args.rounds * (args.wait + 60))
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    with tempfile.TemporaryDirectory() as tmp:
        processes = Processes(write_cluster(Path(tmp) / "cluster.json", PLAYERS, driver="bob"))
        try:
            processes.serve("server0", "server1", "crypto-producer", "alice")
            driver = processes.driver("faults", timeout=5.0, hang_timeout=args.hang_timeout)
            assert driver.result()["ok"]
            for round_ in range(args.rounds):
                driver.send("loop")
                driver.expect("RESULT ", 60)
                time.sleep(random.uniform(0.2, 1.5))
                pid = processes.players[args.player].popen.pid
                os.kill(pid, signal.SIGKILL if args.kill else signal.SIGSTOP)
                stopped, what = time.monotonic(), "killed" if args.kill else "stopped"
                try:
                    outcome = driver.result(timeout=args.wait)
                    print(f"round {round_}: {args.player} {what}, error after {time.monotonic() - stopped:.1f} s: "
                          f"{outcome.get('message', outcome)!s:.150}", flush=True)
                except BaseException:  # noqa: BLE001 - pytest.fail from the bounded wait: a hang
                    print(f"round {round_}: {args.player} {what}, no error within {args.wait:g} s: HANG (driver pid "
                          f"{driver.popen.pid})", flush=True)
                    hangs += 1
                    break
                finally:
                    if args.kill:
                        processes.serve(args.player)
                    else:
                        os.kill(pid, signal.SIGCONT)
                try:
                    driver.send("go")
                    after = driver.result(timeout=40)
                except BaseException:  # noqa: BLE001 - the driver died: say how, then end the run
                    print(f"  the driver ended (exit {driver.popen.poll()}); its stderr ends with:\n"
                          f"{''.join(line for line in driver.stderr if not line.startswith(('I0000', 'W0000')))[-3000:]}",
                          flush=True)
                    raise
                failed_after += not after["ok"]
                print(f"  {'restarted' if args.kill else 'resumed'}, next computation {'succeeds' if after['ok'] else 'FAILS: ' + after['message'][:300]}",
                      flush=True)
        finally:
            if hangs and os.environ.get("STRESS_KEEP_HUNG"):  # leave the hung driver for py-spy
                input("hung: press enter to clean up ")
            processes.close()
            for busy in load:
                busy.kill()
    print(f"{args.player}: {round_ + 1} rounds, {hangs} hangs, {failed_after} failed after resuming")
    return 1 if hangs or failed_after else 0


if __name__ == "__main__":
    sys.exit(main())
