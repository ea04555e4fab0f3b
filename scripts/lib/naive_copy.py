"""The naive baseline for scripts/bench: what an operator would write by hand with pymongo.

For every collection of the given databases: find() on the source, insert_many() on the destination in batches of
1000, one collection after the other. Prints one JSON line with documents, bytes, seconds and rates.
"""
import argparse
import json
import time

from bson import encode
from pymongo import MongoClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help="source URI")
    parser.add_argument("--dest", required=True, help="destination URI")
    parser.add_argument("--db", action="append", required=True, help="database to copy (repeatable)")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    src = MongoClient(args.source)
    dst = MongoClient(args.dest)
    docs = 0
    size = 0
    started = time.monotonic()
    for db in args.db:
        for name in src[db].list_collection_names():
            batch = []
            for doc in src[db][name].find({}):
                batch.append(doc)
                size += len(encode(doc))
                if len(batch) == args.batch:
                    dst[db][name].insert_many(batch, ordered=False)
                    docs += len(batch)
                    batch = []
            if batch:
                dst[db][name].insert_many(batch, ordered=False)
                docs += len(batch)
    seconds = time.monotonic() - started
    print(json.dumps({
        "documents": docs,
        "bytes": size,
        "seconds": seconds,
        "docs_per_second": docs / seconds if seconds else 0.0,
        "mib_per_second": size / seconds / 1048576 if seconds else 0.0,
    }))


if __name__ == "__main__":
    main()
