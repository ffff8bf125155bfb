"""`maskml models`: the model zoo, with sizes, roles and which checkpoints are already in the cache."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the models: size, what they do, whether they are downloaded",
                              description="List every model maskml can load: its parameters, the size of its "
                                          "official checkpoint file, what it does, and whether that file is in "
                                          "the cache folder ($MASKML_HOME, default ~/.cache/maskml).")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)


def describe_models() -> list[dict]:
    """One record per registered model."""
    from maskml.hub import cache_dir
    from maskml.zoo import FAMILY_ROLES, OFFICIAL_FILE_BYTES, get_entry, list_models, parameter_count

    records = []
    for name in list_models():
        entry = get_entry(name)
        path = cache_dir() / entry.filename
        records.append({"name": name, "does": FAMILY_ROLES[entry.family], "parameters": parameter_count(name),
                        "checkpoint": entry.filename, "checkpoint_bytes": OFFICIAL_FILE_BYTES.get(entry.filename),
                        "cached": path.is_file(), "path": str(path), "description": entry.description})
    return records


def format_table(records: list[dict]) -> str:
    rows = [("model", "does", "parameters", "checkpoint", "in cache")]
    for r in records:
        size = f"{r['checkpoint_bytes'] / 1e6:.0f} MB" if r["checkpoint_bytes"] else "?"
        rows.append((r["name"], r["does"], f"{r['parameters'] / 1e6:.1f} M", size, "yes" if r["cached"] else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3}  # numbers align right
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows)


def run(args) -> None:
    from maskml.hub import cache_dir

    records = describe_models()
    if args.json:
        print(json.dumps(records, indent=2))
        return
    print(format_table(records))
    print(f"\ncache: {cache_dir()} (set MASKML_HOME to use another folder); a model whose checkpoint is not "
          f"there is downloaded on first use, or give --checkpoint PATH")
    if any(not r["checkpoint_bytes"] for r in records):
        print("?: the file's exact size is not on record in maskml")
