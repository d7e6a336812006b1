"""Sum a test-suite profile (``BAYESGMM_TEST_PROFILE=folder pytest ...``) per test file.

Usage: ``python tests/_profile_report.py folder [number of slowest tests to list]``.
"""

import collections
import json
import pathlib
import sys


def main(folder, top=25):
    rows = [json.loads(line) for path in sorted(pathlib.Path(folder).glob("*.jsonl")) for line in path.open()]
    keys = ("wall", "trace", "lower", "compile", "compiles", "cache_hits")
    per_file = collections.defaultdict(lambda: dict.fromkeys(keys, 0.0))
    for row in rows:
        totals = per_file[row["test"].split("::")[0]]
        for key in keys:
            totals[key] += row.get(key, 0.0)
    print(f"{'file':40s} {'wall s':>8s} {'trace':>7s} {'lower':>7s} {'compile':>8s} {'#comp':>6s} {'hits':>5s}")
    for name, t in sorted(per_file.items(), key=lambda item: -item[1]["wall"]):
        print(f"{name:40s} {t['wall']:8.1f} {t['trace']:7.1f} {t['lower']:7.1f} {t['compile']:8.1f} "
              f"{int(t['compiles']):6d} {int(t['cache_hits']):5d}")
    total = {key: sum(t[key] for t in per_file.values()) for key in keys}
    print(f"{'total':40s} {total['wall']:8.1f} {total['trace']:7.1f} {total['lower']:7.1f} {total['compile']:8.1f} "
          f"{int(total['compiles']):6d} {int(total['cache_hits']):5d}")
    programs = collections.defaultdict(lambda: [0, 0.0])
    for path in pathlib.Path(folder).glob("*.programs.json"):
        for name, (count, seconds) in json.loads(path.read_text()).items():
            programs[name][0] += count
            programs[name][1] += seconds
    if programs:
        print("\nprograms by compile time (name: compilations, seconds):")
        for name, (count, seconds) in sorted(programs.items(), key=lambda item: -item[1][1])[:top]:
            print(f"{seconds:8.1f} s {count:5d}  {name}")
        small = [(c, s) for c, s in programs.values() if s / c < 0.05]
        print(f"programs averaging under 50 ms: {sum(c for c, _ in small)} compilations, {sum(s for _, s in small):.1f} s")
    print(f"\nslowest {top} tests:")
    for row in sorted(rows, key=lambda r: -r.get("wall", 0))[:top]:
        print(f"{row.get('wall', 0):7.1f} s  compile {row.get('compile', 0):6.1f} s  trace {row.get('trace', 0):5.1f} s  {row['test']}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
