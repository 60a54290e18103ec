#!/usr/bin/env python3
"""Build the byte-level training corpus for the trained-for-the-purpose model (issue 15 item 4).

Long English text that Debian 12 (bookworm) packages ship: manuals, handbooks, reference
documentation and two dictionaries. The .deb files are fetched with `apt-get download` (no
install, no dependencies) and unpacked with `dpkg-deb -x` into a scratch folder; every
document is turned into plain text (HTML tags dropped, POD/man markup left as it is), and the
documents are written, in a seeded shuffled order, into one byte stream:
  <out>/train.bin, <out>/val.bin   raw bytes (uint8; the model's vocabulary is the 256 bytes)
  <out>/manifest.json              packages with versions, document and byte counts, seed
Documents are separated by byte 0x02 (STX), which the text itself never holds.
Every 100th document (after the shuffle) goes to val.bin.

Usage: python3 build_corpus.py [--out experiments/trained_model/corpus] [--seed 1234]
Needs: apt-get (Debian 12 sources), dpkg-deb, python3 (stdlib only).
"""
import argparse, glob, gzip, html.parser, json, os, random, re, subprocess, sys, zlib

PACKAGES = [
    # package name, globs (relative to the unpacked root) of the files taken, kind
    ("linux-doc-6.1", ["usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz",
                       "usr/share/doc/linux-doc-6.1/Documentation/**/*.txt.gz"], "text"),
    ("python3.11-doc", ["usr/share/doc/python3.11/html/_sources/**/*.rst.txt"], "text"),
    ("perl-doc", ["usr/share/perl/*/pod/*.pod", "usr/share/perl/*/**/*.pod.gz"], "text"),
    ("postgresql-doc-15", ["usr/share/doc/postgresql-doc-15/html/*.html"], "html"),
    ("debian-handbook", ["usr/share/doc/debian-handbook/html/en-US/*.html"], "html"),
    ("debian-reference-en", ["usr/share/doc/debian-reference/*.en.html",
                             "usr/share/debian-reference/*.en.html"], "html"),
    ("maint-guide", ["usr/share/doc/maint-guide/html/*.en.html"], "html"),
    ("gnu-standards", ["usr/share/doc/gnu-standards/*.html",
                       "usr/share/info/standards.info.gz", "usr/share/info/maintain.info.gz"], "text"),
    ("dict-gcide", ["usr/share/dictd/gcide.dict.dz"], "dictdz"),
    ("dict-jargon", ["usr/share/dictd/jargon.dict.dz"], "dictdz"),
]
SEP = b"\x02"


class _Text(html.parser.HTMLParser):
    SKIP = {"script", "style", "head"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
             "dt", "dd", "table", "section", "blockquote"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)


def html_to_text(raw: bytes) -> bytes:
    p = _Text()
    p.feed(raw.decode("utf-8", "replace"))
    text = "".join(p.out)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip().encode("utf-8")


def read_file(path: str) -> bytes:
    if path.endswith(".dz") or path.endswith(".gz"):
        with gzip.open(path, "rb") as f:  # dictzip is gzip-compatible
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def docs_of(root, globs, kind):
    files = sorted({f for g in globs for f in glob.glob(os.path.join(root, g), recursive=True)
                    if os.path.isfile(f)})
    for f in files:
        raw = read_file(f)
        if kind == "html":
            raw = html_to_text(raw)
        if kind == "dictdz":
            # dictd files: one long stream of entries; cut it into ~256 KiB documents at
            # entry boundaries so that the shuffle mixes them with the prose
            chunk = 256 * 1024
            start = 0
            while start < len(raw):
                end = raw.find(b"\n\n", start + chunk)
                end = len(raw) if end < 0 else end + 2
                yield f"{os.path.relpath(f, root)}@{start}", raw[start:end].replace(SEP, b" ")
                start = end
            continue
        raw = raw.replace(SEP, b" ")
        if len(raw) >= 512:  # drop stubs (index pages, redirects)
            yield os.path.relpath(f, root), raw


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "corpus"))
    ap.add_argument("--scratch", default="/tmp/pnmkv_corpus_debs")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.scratch, exist_ok=True)
    names = [p for p, _, _ in PACKAGES]
    subprocess.run(["apt-get", "download"] + names, cwd=a.scratch, check=True)
    docs, pkg_info = [], []
    for name, globs, kind in PACKAGES:
        debs = sorted(glob.glob(os.path.join(a.scratch, name + "_*.deb")))
        if not debs:
            sys.exit(f"build_corpus: no .deb for {name} in {a.scratch}")
        deb = debs[-1]
        root = os.path.join(a.scratch, "x", name)
        if not os.path.isdir(root):
            os.makedirs(root)
            subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
        n0, b0 = len(docs), sum(len(d) for _, d in docs)
        docs.extend((f"{name}:{p}", d) for p, d in docs_of(root, globs, kind))
        n, b = len(docs) - n0, sum(len(d) for _, d in docs) - b0
        if n == 0:
            sys.exit(f"build_corpus: {name}: no file matched {globs}")
        pkg_info.append({"package": name, "deb": os.path.basename(deb), "documents": n, "bytes": b})
        print(f"{name:22s} {n:6d} docs {b/1e6:8.1f} MB", flush=True)
    random.Random(a.seed).shuffle(docs)
    train, val = bytearray(), bytearray()
    for i, (_, d) in enumerate(docs):
        (val if i % 100 == 0 else train).extend(d + SEP)
    with open(os.path.join(a.out, "train.bin"), "wb") as f:
        f.write(train)
    with open(os.path.join(a.out, "val.bin"), "wb") as f:
        f.write(val)
    man = {"seed": a.seed, "separator_byte": 2, "packages": pkg_info,
           "train_bytes": len(train), "val_bytes": len(val),
           "train_crc32": zlib.crc32(train), "val_crc32": zlib.crc32(val)}
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1)
    print(f"train {len(train)/1e6:.1f} MB, val {len(val)/1e6:.1f} MB -> {a.out}")


if __name__ == "__main__":
    main()
