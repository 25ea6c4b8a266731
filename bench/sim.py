"""Simulated schedules per second, for docs/benchmarks.md and the simulator's speed target.

Runs `--schedules` random schedules of one protocol in this process (one core)
and prints schedules per second of CPU time and of wall time, and trace events
per schedule. `--txns 1 --faults 1` is issue 5's configuration (3 participants,
one transaction, one fault: about 50-65 trace entries, of which about 20 are
message deliveries and faults); the defaults are `dtxn simulate`'s.

    python -m dtxn.bench.sim --protocol 2pc --schedules 500 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from dtxn.runtime import sim
from dtxn.runtime.sim import sagas as sim_sagas


def rate(protocol: str, schedules: int, seed: int, txns: int, faults: int) -> dict[str, float]:
    events = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for index in range(schedules):
        if protocol == "saga":
            saga = sim_sagas.random_scenario(
                sim_sagas.schedule_seed(seed, index), sagas=txns, faults=faults
            )
            events += sim_sagas.run(saga, raise_on_violation=False, hash_trace=False).events
        else:
            scenario = sim.random_scenario(
                sim.schedule_seed(seed, index), protocol=protocol, txns=txns, faults=faults
            )
            events += sim.run(scenario, raise_on_violation=False, hash_trace=False).events
    cpu_s = time.process_time() - cpu0
    wall_s = time.perf_counter() - wall0
    return {"cpu_per_s": schedules / cpu_s, "wall_per_s": schedules / wall_s,
            "events_per_schedule": events / schedules}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="2pc", choices=["2pc", "3pc", "saga"])
    parser.add_argument("--schedules", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--txns", type=int, default=None, help="default 2 (3 sagas)")
    parser.add_argument("--faults", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    txns = args.txns if args.txns is not None else (3 if args.protocol == "saga" else 2)
    runs = [rate(args.protocol, args.schedules, args.seed, txns, args.faults)
            for _ in range(args.repeats)]
    print(json.dumps({
        "protocol": args.protocol, "txns": txns, "faults": args.faults,
        "median_cpu_schedules_per_s": round(statistics.median(r["cpu_per_s"] for r in runs), 1),
        "median_wall_schedules_per_s": round(statistics.median(r["wall_per_s"] for r in runs), 1),
        "events_per_schedule": round(runs[0]["events_per_schedule"], 1),
    }))


if __name__ == "__main__":
    main()
