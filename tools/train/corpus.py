#!/usr/bin/env python3
"""Builds the training corpus of the default model from freely licensed text that Debian
packages install (README.md lists each source and its licence):

* scripture: the King James Bible (`bible-kjv`, public domain), one document per chapter;
* English prose: the Jargon File 4.4.7 (`jargon-text`, public domain), one document per entry,
  and the prose parts of the Python 3.11 documentation (`python3.11-doc`, PSF licence: the
  tutorial, HOWTOs, FAQ, glossary), one document per section;
* Python source: the top-level modules of the Python 3.11 standard library (`libpython3.11-stdlib`,
  PSF licence), one document per function or class;
* chat: ChatML conversations built from those documents (continue a passage, name a verse, explain
  a function from its docstring, define a Jargon term), in the chat template's own format, so
  `<|im_start|>`, `<|im_end|>` and the `<think>` block are learned.

Every 20th document of each domain (by a hash of its name, so the split is stable) is held out
for evaluation. Writes `<work>/corpus/{train,eval}.jsonl` (one `{"domain", "text"}` per line) and
a summary. Deterministic: the same packages give the same files.
"""

import argparse
import ast
import glob
import gzip
import hashlib
import html
import json
import os
import random
import re
import subprocess

from common import work_dir

DOMAINS = ("scripture", "prose", "code", "chat")
EVAL_EVERY = 20

BOOKS = [
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon",
    "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah",
    "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi",
    "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians",
    "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians",
    "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter",
    "1 John", "2 John", "3 John", "Jude", "Revelation",
]


def held_out(name):
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % EVAL_EVERY == 0


def scripture():
    """(name, text, verses) per chapter; verses are (reference, text)."""
    out = subprocess.run(
        ["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True
    ).stdout
    chapters, order = {}, []
    book_index, last_abbrev = -1, None
    for line in out.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if not m:
            continue
        abbrev, chapter, verse, text = m.groups()
        if abbrev != last_abbrev:
            book_index, last_abbrev = book_index + 1, abbrev
        book = BOOKS[book_index]
        key = f"{book} {chapter}"
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append((f"{book} {chapter}:{verse}", text.strip()))
    assert book_index == len(BOOKS) - 1, f"expected 66 books, found {book_index + 1}"
    docs = []
    for key in order:
        verses = chapters[key]
        text = f"{key}\n\n" + "\n".join(
            f"{ref.rsplit(':', 1)[1]} {t}" for ref, t in verses
        )
        docs.append((key, text, verses))
    return docs


def jargon():
    """(term, text) per Jargon File entry."""
    raw = gzip.open("/usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8").read()
    # An entry starts with an indented ":term: pronunciation, part of speech" line; its body
    # runs to the next such line. The front matter before the first entry is skipped.
    entries, term, body = [], None, []
    for line in raw.splitlines():
        m = re.match(r"^   :([^:]+):(.*)$", line)
        if m:
            if term and body:
                entries.append((term, "\n".join(body).strip()))
            term, body = m.group(1).strip(), []
        elif term is not None:
            body.append(line[3:] if line.startswith("   ") else line)
    if term and body:
        entries.append((term, "\n".join(body).strip()))
    docs = []
    for term, text in entries:
        text = re.sub(r"\n{3,}", "\n\n", text)
        if len(text) < 80:
            continue
        docs.append((f"jargon:{term}", f"{term}\n\n{text}", term))
    return docs


def python_docs():
    """(name, text) per section of the prose parts of the Python documentation."""
    root = "/usr/share/doc/python3.11/html/_sources"
    files = []
    for part in ("tutorial", "howto", "faq"):
        files += sorted(glob.glob(f"{root}/{part}/*.rst.txt"))
    files.append(f"{root}/glossary.rst.txt")
    docs = []
    for path in files:
        text = open(path, encoding="utf-8").read()
        # Drop reST directives and roles down to their text; keep code examples (indented).
        text = re.sub(r"^\.\. [^\n]*(\n   +[^\n]*)*", "", text, flags=re.M)
        text = re.sub(r":[a-z:]+:`~?([^`<]*?)(?: <[^>]*>)?`", r"\1", text)
        text = re.sub(r"``([^`]*)``", r"\1", text)
        text = re.sub(r"\n{3,}", "\n\n", text)
        # One document per section (a title underlined with = - ~ or *).
        parts = re.split(r"\n(?=[^\n]+\n[=\-~*^]{3,}\n)", text)
        rel = os.path.relpath(path, root)
        for i, part in enumerate(parts):
            part = part.strip()
            if len(part) > 200:
                docs.append((f"pydoc:{rel}:{i}", part))
    return docs


def python_source():
    """(name, text, docstring) per top-level function or class of the standard library."""
    docs = []
    for path in sorted(glob.glob("/usr/lib/python3.11/*.py")):
        src = open(path, encoding="utf-8", errors="replace").read()
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        lines = src.splitlines()
        module = os.path.basename(path)[:-3]
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            text = "\n".join(lines[start : node.end_lineno])
            if not 80 <= len(text) <= 6000:
                continue
            doc = ast.get_docstring(node) or ""
            docs.append((f"py:{module}.{node.name}", text, (module, node.name, doc)))
    return docs


def first_sentence(text, limit=300):
    text = " ".join(text.split())
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    s = m.group(1) if m else text
    return s[:limit]


def chat(user, answer, thinking=None):
    """One conversation in the chat template's format (tokenizer.py's CHAT_TEMPLATE): with
    thinking off the assistant turn starts with an empty `<think></think>`."""
    think = f"<think>\n{thinking}\n</think>\n" if thinking else "<think></think>"
    return (
        f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        f"<|im_start|>assistant\n{think}{answer}<|im_end|>\n"
    )


def words(text, start, n):
    w = text.split()
    return " ".join(w[start : start + n])


def chats(rng, bible, jarg, pydocs, code):
    out = []
    for name, text, verses in bible:
        ref, verse = verses[rng.randrange(len(verses))]
        out.append((name, chat(f"Where in the Bible is this verse?\n\n{verse}", f"It is {ref}.")))
        if len(verses) > 4:
            i = rng.randrange(len(verses) - 3)
            given = " ".join(v for _, v in verses[i : i + 2])
            rest = " ".join(v for _, v in verses[i + 2 : i + 4])
            out.append((name, chat(f"Continue this passage:\n\n{given}", rest)))
    for name, text, term in jarg:
        body = text.split("\n\n", 1)[-1]
        thinking = f"The user asks about the hacker term \"{term}\"." if rng.random() < 0.3 else None
        out.append((name, chat(f"What does \"{term}\" mean?", first_sentence(body, 600), thinking)))
    for name, text in pydocs:
        w = text.split()
        if len(w) > 120:
            i = rng.randrange(len(w) - 100)
            out.append((name, chat(f"Continue this text:\n\n{words(text, i, 50)}", words(text, i + 50, 50))))
    for name, text, (module, fn, doc) in code:
        if doc:
            summary = first_sentence(doc)
            thinking = f"This is {fn} from the {module} module." if rng.random() < 0.3 else None
            out.append((name, chat(f"Explain what this Python code does:\n\n{text}", summary, thinking)))
            out.append((name, chat(f"Write a Python function or class `{fn}`: {summary}", text)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=work_dir(), help="output folder (default %(default)s)")
    args = ap.parse_args()
    rng = random.Random(19)
    bible, jarg, pydocs, code = scripture(), jargon(), python_docs(), python_source()
    docs = (
        [("scripture", n, t) for n, t, _ in bible]
        + [("prose", n, t) for n, t, _ in jarg]
        + [("prose", n, t) for n, t in pydocs]
        + [("code", n, t) for n, t, _ in code]
        + [("chat", n, t) for n, t in chats(rng, bible, jarg, pydocs, code)]
    )
    rng.shuffle(docs)
    out_dir = os.path.join(args.work, "corpus")
    os.makedirs(out_dir, exist_ok=True)
    summary = {d: {"train": [0, 0], "eval": [0, 0]} for d in DOMAINS}
    with open(os.path.join(out_dir, "train.jsonl"), "w") as train, open(
        os.path.join(out_dir, "eval.jsonl"), "w"
    ) as ev:
        for domain, name, text in docs:
            # A chat about a held-out document is held out with it.
            split = "eval" if held_out(name) else "train"
            (ev if split == "eval" else train).write(
                json.dumps({"domain": domain, "name": name, "text": text}) + "\n"
            )
            summary[domain][split][0] += 1
            summary[domain][split][1] += len(text)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for d, s in summary.items():
        print(f"{d:10} train {s['train'][0]:6} docs {s['train'][1]/1e6:6.2f} MB   eval {s['eval'][0]:5} docs {s['eval'][1]/1e6:5.2f} MB")


if __name__ == "__main__":
    main()
