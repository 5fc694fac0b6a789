"""Write an image-folder copy of CIFAR-10 (or CIFAR-100) from a git repository that holds
one as ``train/CLASS/*.jpg`` and ``test/CLASS/*.jpg`` -- e.g. a bare clone or mirror of a
public JPEG copy -- so that ``-data cifar10 --data-root OUT`` reads it.

    python3 benchmarks/cifar_from_git.py /path/to/repo.git data/cifar10-jpeg

Only ``train/`` and ``test/`` are written; the blobs are read with one ``git cat-file
--batch`` process (no work tree needed). An existing file is left as it is (the copy can be
resumed); a file whose size differs from the blob's is an error, nothing is overwritten.
"""
import argparse
import os
import subprocess
import sys


def list_images(git_dir, revision):
    """``[(path, blob id, size)]`` of every file under train/ and test/ at ``revision``."""
    listing = subprocess.run(
        ["git", "--git-dir", git_dir, "ls-tree", "-r", "-l", "-z", revision, "--", "train",
         "test"], check=True, capture_output=True).stdout.decode()
    entries = []
    for record in filter(None, listing.split("\0")):
        meta, path = record.split("\t", 1)
        _, kind, blob, size = meta.split()
        if kind == "blob":
            entries.append((path, blob, int(size)))
    return entries


def copy_images(git_dir, out, revision="HEAD", show_progress=True):
    """Write the images to ``out``; returns (written, kept) counts."""
    entries = list_images(git_dir, revision)
    if not entries:
        raise SystemExit(f"error: no files under train/ or test/ at {revision} in {git_dir}")
    todo = []
    kept = 0
    for path, blob, size in entries:
        target = os.path.join(out, path)
        if os.path.exists(target):
            if os.path.getsize(target) != size:
                raise SystemExit(f"error: {target} exists with another size than the "
                                 f"repository's: remove it or choose another folder")
            kept += 1
        else:
            todo.append((target, blob, size))
    process = subprocess.Popen(["git", "--git-dir", git_dir, "cat-file", "--batch"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for count, (target, blob, size) in enumerate(todo, 1):
            process.stdin.write(f"{blob}\n".encode())
            process.stdin.flush()
            header = process.stdout.readline().split()
            if len(header) != 3 or int(header[2]) != size:
                raise SystemExit(f"error: git cat-file answered {header!r} for {target}")
            payload = process.stdout.read(size)
            process.stdout.read(1)  # the newline after each object
            os.makedirs(os.path.dirname(target), exist_ok=True)
            partial = target + ".part"
            with open(partial, "wb") as handle:
                handle.write(payload)
            os.replace(partial, target)
            if show_progress and count % 5000 == 0:
                print(f"{count}/{len(todo)} images written", file=sys.stderr)
    finally:
        process.stdin.close()
        process.wait()
    return len(todo), kept


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("git_dir", help="the repository's git directory (bare clone or .git)")
    parser.add_argument("out", help="folder to write train/ and test/ into")
    parser.add_argument("--revision", default="HEAD", help="commit to read (default: HEAD)")
    return parser


def main():
    args = get_args_parser().parse_args()
    written, kept = copy_images(args.git_dir, args.out, args.revision)
    print(f"{written} images written, {kept} already there, under {args.out}")


if __name__ == "__main__":
    main()
