"""``exo-spec key``: this machine's cluster key file (``auth.key_file``).

    exo-spec key                 print the key file's path, making a key there if none
    exo-spec key --join-token    print the key as a join token (on the coordinator's machine)
    exo-spec key --join TOKEN    make TOKEN this machine's key (on a joining machine)

The token is the key itself: it goes on stdout only, never in a log, and is best
passed on as the file would be (over ssh, say).
"""

from __future__ import annotations

import sys

from ..auth.key_file import (
    ClusterKey,
    KeyFileError,
    add_key_file_flag,
    key_path,
    load_key,
    load_or_create_key,
    save_key,
)


def add_parser(sub) -> None:
    p = sub.add_parser("key", help="make, show or join a cluster key",
                       description="Print this machine's cluster key file (made if there is "
                                   "none), print its join token, or join with one.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--join-token", action="store_true",
                      help="print the key as a token for `exo-spec key --join` elsewhere")
    what.add_argument("--join", metavar="TOKEN",
                      help="write TOKEN (from `exo-spec key --join-token`) as this machine's "
                           "key; refused when the key file holds another key")
    add_key_file_flag(p, made=True)
    p.set_defaults(run=run)


def run(args) -> int:
    try:
        if args.join is not None:
            try:
                key = ClusterKey.from_token(args.join)
            except ValueError as e:
                raise KeyFileError(f"--join: not a join token ({e})") from None
            path = key_path(args.key_file)
            if path.exists() and load_key(args.key_file) == key:
                print(f"exo-spec key: {path} holds this key already", file=sys.stderr)
            else:
                print(f"exo-spec key: wrote {save_key(key, args.key_file)}", file=sys.stderr)
        elif args.join_token:
            print(load_key(args.key_file).token())
        else:
            _, made = load_or_create_key(args.key_file)
            path = key_path(args.key_file)
            print(path)
            if made:
                print(f"exo-spec key: made a new cluster key in {path}", file=sys.stderr)
    except KeyFileError as e:
        print(f"exo-spec key: error: {e}", file=sys.stderr)
        return 2
    return 0
