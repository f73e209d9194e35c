"""Text side of the video tasks: captions (retrieval), questions/answers (VideoQA), tokenizer, answer vocabulary.

Files are JSON lines (one object per line) or CSV with a header. Errors name the file, the
line number and what is wrong; up to 10 problems are reported at once.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from labelstore.errors import DataError
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "Caption",
    "Question",
    "TextFileError",
    "CaptionsError",
    "QuestionsError",
    "read_captions",
    "read_questions",
    "check_videos",
    "check_answers",
    "Tokenizer",
    "AnswerVocab",
    "normalize_answer",
]

_MAX_REPORTED = 10


class TextFileError(DataError):
    """Malformed captions/questions file. `.errors` holds (line, message) pairs (at most 10 shown)."""

    def __init__(self, message: str, errors: Sequence[tuple[int, str]] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


class CaptionsError(TextFileError):
    pass


class QuestionsError(TextFileError):
    pass


@dataclass(frozen=True)
class Caption:
    video_id: str
    text: str
    line: int = field(default=0, compare=False, repr=False)
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # other keys of the record


@dataclass(frozen=True)
class Question:
    video_id: str
    question: str
    answer: str
    answers: list[str] | None = None
    line: int = field(default=0, compare=False, repr=False)
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __hash__(self) -> int:  # answers is a list: hash its tuple
        return hash((self.video_id, self.question, self.answer, None if self.answers is None else tuple(self.answers)))


def normalize_answer(a: str) -> str:
    return " ".join(str(a).lower().split())


# --------------------------------------------------------------------------------------
# Record reading
# --------------------------------------------------------------------------------------


def _fmt(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext in (".csv", ".tsv"):
        return "csv"
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "csv"
    return "jsonl"


def _records(path: Path, required: Sequence[str], err: list) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) pairs; structural problems are appended to err."""
    if _fmt(path) == "jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    err.append((lineno, f"bad JSON ({e.msg} at column {e.colno})"))
                    continue
                if not isinstance(rec, dict):
                    err.append((lineno, f"expected a JSON object, got {type(rec).__name__}"))
                    continue
                yield lineno, rec
    else:
        delim = "\t" if path.suffix.lower() == ".tsv" else ","
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delim)
            header = None
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                    missing = [k for k in required if k not in header]
                    if missing:
                        err.append((reader.line_num, f"CSV header {header} lacks column(s) {missing}"))
                        return
                    continue
                if len(row) != len(header):
                    err.append((reader.line_num, f"expected {len(header)} CSV fields {header}, got {len(row)}"))
                    continue
                yield reader.line_num, dict(zip(header, row))


def _text_field(rec: dict, key: str, what: str, problems: list[str]) -> str | None:
    if key not in rec or rec[key] is None:
        problems.append(f"missing field {key!r}")
        return None
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        problems.append(f"field {key!r} must be a string, got {type(v).__name__}")
        return None
    v = str(v).strip()
    if not v:
        problems.append(f"empty {what}")
        return None
    return v


def _raise(exc: type[TextFileError], path: Path, err: list[tuple[int, str]], what: str) -> None:
    shown = "\n".join(f"  {path}:{ln}: {msg}" for ln, msg in err[:_MAX_REPORTED])
    more = f"\n  ... and {len(err) - _MAX_REPORTED} more" if len(err) > _MAX_REPORTED else ""
    first_ln, first_msg = err[0]
    raise exc(f"{path}:{first_ln}: {first_msg} ({len(err)} malformed {what} line(s) in total)\n{shown}{more}", err)


def read_captions(path: str | os.PathLike) -> list[Caption]:
    """Captions from JSON lines ({"video_id", "caption", ...}) or CSV (header video_id,caption)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    err: list[tuple[int, str]] = []
    out: list[Caption] = []
    for lineno, rec in _records(path, ("video_id", "caption"), err):
        problems: list[str] = []
        vid = _text_field(rec, "video_id", "video_id", problems)
        text = _text_field(rec, "caption", "caption", problems)
        if problems:
            err.append((lineno, "; ".join(problems)))
            continue
        extra = {k: v for k, v in rec.items() if k not in ("video_id", "caption")}
        out.append(Caption(vid, text, line=lineno, extra=extra))
    if err:
        _raise(CaptionsError, path, err, "caption")
    if not out:
        raise CaptionsError(f"{path}: no captions found")
    return out


def _answers_field(rec: dict, problems: list[str]) -> list[str] | None:
    v = rec.get("answers")
    if v is None:
        return None
    if isinstance(v, str):  # CSV: "a|b|c"
        parts = [p.strip() for p in v.split("|")]
        parts = [p for p in parts if p]
        return parts or None
    if not isinstance(v, list) or not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in v):
        problems.append(f"field 'answers' must be a list of strings, got {v!r}")
        return None
    parts = [str(a).strip() for a in v]
    if any(not p for p in parts):
        problems.append("field 'answers' contains an empty answer")
        return None
    return parts or None


def read_questions(path: str | os.PathLike) -> list[Question]:
    """Questions from JSON lines ({"video_id", "question", "answer", "answers"?}) or CSV (answers as "a|b|c").

    `answer` is the (single) training annotation; `answers`, when present, is the full set of
    correct answers and must contain `answer`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"questions file {path} does not exist")
    err: list[tuple[int, str]] = []
    out: list[Question] = []
    for lineno, rec in _records(path, ("video_id", "question", "answer"), err):
        problems: list[str] = []
        vid = _text_field(rec, "video_id", "video_id", problems)
        q = _text_field(rec, "question", "question", problems)
        a = _text_field(rec, "answer", "answer", problems)
        answers = _answers_field(rec, problems)
        if a is not None and answers is not None and normalize_answer(a) not in {normalize_answer(x) for x in answers}:
            problems.append(f"answer {a!r} is not among answers {answers}")
        if problems:
            err.append((lineno, "; ".join(problems)))
            continue
        extra = {k: v for k, v in rec.items() if k not in ("video_id", "question", "answer", "answers")}
        out.append(Question(vid, q, a, answers, line=lineno, extra=extra))
    if err:
        _raise(QuestionsError, path, err, "question")
    if not out:
        raise QuestionsError(f"{path}: no questions found")
    return out


def check_videos(
    items: Sequence[Caption | Question],
    video_ids: Mapping[str, int] | Iterable[str],
    path: str | os.PathLike | None = None,
) -> list[int]:
    """Rows (into the video source) of each caption/question's video; raises listing items whose video is missing.

    `video_ids` is a `video_index(...)` dict (id -> row) or a sequence of ids (row = position;
    file stems are accepted in place of relative paths).
    """
    if not isinstance(video_ids, Mapping):
        from labelstore.pipeline.video import video_index

        video_ids = video_index(video_ids)
    rows: list[int] = []
    missing: list[tuple[Caption | Question, str]] = []
    for it in items:
        row = video_ids.get(it.video_id)
        if row is None:
            missing.append(it)
            rows.append(-1)
        else:
            rows.append(int(row))
    if missing:
        where = str(path) if path is not None else "captions"
        distinct = sorted({it.video_id for it in missing})
        shown = "\n".join(
            f"  line {it.line}: video {it.video_id!r}: {getattr(it, 'text', None) or getattr(it, 'question', '')!r}"
            for it in missing[:_MAX_REPORTED]
        )
        more = f"\n  ... and {len(missing) - _MAX_REPORTED} more" if len(missing) > _MAX_REPORTED else ""
        exc = QuestionsError if isinstance(missing[0], Question) else CaptionsError
        raise exc(
            f"{where}: {len(missing)} of {len(items)} entries refer to {len(distinct)} video(s) not in the "
            f"video source ({len(video_ids)} videos), e.g. {distinct[:5]}:\n{shown}{more}",
            [(it.line, f"missing video {it.video_id!r}") for it in missing],
        )
    return rows


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class Tokenizer:
    """Word-level tokenizer: lowercase, split on non-alphanumerics. Ids: pad=0, unk=1, words from 2
    (most frequent first, ties alphabetical)."""

    PAD = 0
    UNK = 1
    SPECIALS = ("<pad>", "<unk>")

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self._ids = {w: i + len(self.SPECIALS) for i, w in enumerate(self.words)}
        if len(self._ids) != len(self.words):
            raise DataError("Tokenizer: duplicate words in the vocabulary")

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return _WORD.findall(str(text).lower())

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> "Tokenizer":
        counts = Counter(w for t in texts for w in cls.tokenize(t))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - len(cls.SPECIALS))]
        return cls(words)

    def __len__(self) -> int:
        return len(self.words) + len(self.SPECIALS)

    def token_id(self, word: str) -> int:
        return self._ids.get(word, self.UNK)

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [max_len], mask bool [max_len]); truncated / padded with pad=0."""
        toks = [self._ids.get(w, self.UNK) for w in self.tokenize(text)][:max_len]
        ids = np.zeros(max_len, np.int64)
        ids[: len(toks)] = toks
        mask = np.zeros(max_len, bool)
        mask[: len(toks)] = True
        return ids, mask

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [B, max_len], mask bool [B, max_len])."""
        ids = np.zeros((len(texts), max_len), np.int64)
        mask = np.zeros((len(texts), max_len), bool)
        for b, t in enumerate(texts):
            ids[b], mask[b] = self.encode(t, max_len)
        return ids, mask

    def decode(self, ids: Iterable[int]) -> str:
        vocab = list(self.SPECIALS) + self.words
        return " ".join(vocab[int(i)] for i in ids if int(i) != self.PAD)

    def to_json(self) -> dict:
        return {"kind": "word_tokenizer", "version": 1, "words": list(self.words)}

    @classmethod
    def from_json(cls, obj: str | bytes | dict) -> "Tokenizer":
        cfg = obj if isinstance(obj, dict) else json.loads(obj)
        if cfg.get("kind") != "word_tokenizer":
            raise DataError(f"Tokenizer.from_json: not a word tokenizer config (kind={cfg.get('kind')!r})")
        return cls(cfg["words"])


# --------------------------------------------------------------------------------------
# Answer vocabulary
# --------------------------------------------------------------------------------------


class AnswerVocab:
    """Top-N answers (normalised: lowercase, single spaces), most frequent first, ties alphabetical."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = [normalize_answer(a) for a in answers]
        self._ids = {a: i for i, a in enumerate(self.answers)}
        if len(self._ids) != len(self.answers):
            raise DataError("AnswerVocab: duplicate answers")

    @classmethod
    def build(cls, answers: Iterable[str], top_n: int | None = None) -> "AnswerVocab":
        counts = Counter(normalize_answer(a) for a in answers)
        counts.pop("", None)
        ranked = sorted(counts, key=lambda a: (-counts[a], a))
        return cls(ranked if top_n is None else ranked[:top_n])

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return normalize_answer(answer) in self._ids

    def index(self, answer: str) -> int:
        """Class id of `answer`, -1 if outside the vocabulary."""
        return self._ids.get(normalize_answer(answer), -1)

    def indices(self, answers: Iterable[str]) -> np.ndarray:
        return np.asarray([self.index(a) for a in answers], dtype=np.int64)

    def multi_hot(self, answers: Iterable[str]) -> np.ndarray:
        """bool [len(vocab)]: True for each in-vocabulary answer (e.g. the full set of correct answers)."""
        out = np.zeros(len(self), bool)
        for a in answers:
            k = self.index(a)
            if k >= 0:
                out[k] = True
        return out

    def to_json(self) -> dict:
        return {"kind": "answer_vocab", "version": 1, "answers": list(self.answers)}

    @classmethod
    def from_json(cls, obj: str | bytes | dict) -> "AnswerVocab":
        cfg = obj if isinstance(obj, dict) else json.loads(obj)
        if cfg.get("kind") != "answer_vocab":
            raise DataError(f"AnswerVocab.from_json: not an answer vocabulary config (kind={cfg.get('kind')!r})")
        return cls(cfg["answers"])


def check_answers(
    questions: Sequence[Question],
    vocab: AnswerVocab,
    path: str | os.PathLike | None = None,
    strict: bool = False,
) -> list[int]:
    """Positions of questions whose (training) answer is outside `vocab`; with strict=True raise instead."""
    out = [k for k, q in enumerate(questions) if vocab.index(q.answer) < 0]
    if strict and out:
        where = str(path) if path is not None else "questions"
        shown = "\n".join(
            f"  line {questions[k].line}: video {questions[k].video_id!r}: {questions[k].question!r} -> {questions[k].answer!r}"
            for k in out[:_MAX_REPORTED]
        )
        more = f"\n  ... and {len(out) - _MAX_REPORTED} more" if len(out) > _MAX_REPORTED else ""
        raise QuestionsError(
            f"{where}: {len(out)} of {len(questions)} questions have an answer outside the "
            f"{len(vocab)}-answer vocabulary:\n{shown}{more}",
            [(questions[k].line, f"answer {questions[k].answer!r} not in vocabulary") for k in out],
        )
    return out
