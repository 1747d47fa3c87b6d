"""The tokenizer: tiktoken's BPE with minR1's special tokens, and a byte-level BPE trainer for the toy world.

    python data.py --train-tokenizer     # rebuild data/toy.tiktoken from the toy corpus (the same file every time)

The toy tokenizer is trained by us on the toy corpus (train_bpe below) and shipped as a tiktoken ranks file, so
nothing is downloaded at run time; tiktoken loads it and does the encoding. The config's "tokenizer" picks one:

    "toy"                      data/toy.tiktoken (the toy world's BPE)
    "tiktoken:PATH"            a local tiktoken ranks file ("base64(token bytes) rank" per line), e.g.
                               o200k_base.tiktoken: a file named after one of tiktoken's public encodings gets that
                               encoding's regex and special tokens, any other file minR1's regex (PAT_STR)
    "hf:PATH"                  a local Hugging Face tokenizer.json (byte-level BPE: GPT-2, Llama 3, Qwen, DeepSeek
                               V3), or the folder holding it: converted to tiktoken ranks here, without network
    "o200k_base", ...          one of tiktoken's public encodings by name: tiktoken DOWNLOADS it on first use (an
                               offline machine gets an error naming the encoding and the local-file option)

Every tokenizer has minR1's special tokens (SPECIAL_TOKENS), which the pipeline writes into its text: the chat
format <|system|>S<|user|>U<|assistant|>R<|endoftext|> (data.chat_prompt), the cold-start separator <|sep|> and
the pad token. A tokenizer that has its own tokens for these roles (DeepSeek V3's <｜User｜>, <｜Assistant｜>,
<｜end▁of▁sentence｜>; tokenizer_config.json's eos/pad/bos) maps minR1's names onto them, so the chat format IS
the checkpoint's chat template; the others take its reserved tokens (<｜place▁holder▁no▁0｜>, ...), else new ids
after the vocabulary. <think>, </think>, <answer> and
</answer> are ordinary text (the R1-Zero template writes them, the rewards read them), as in R1.
"""
import base64
import functools
import heapq
import json
import os
import unicodedata
from collections import Counter, defaultdict

import regex
import tiktoken

ROOT = os.path.dirname(os.path.abspath(__file__))
TOY_TOKENIZER = os.path.join(ROOT, "data", "toy.tiktoken")
TOY_VOCAB_SIZE = 1024   # 256 bytes + learned merges + the special tokens

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>", "<|sep|>")
EOS, PAD, USER, ASSISTANT, SYSTEM, SEP = SPECIAL_TOKENS

# The pre-tokenizer (a GPT-style regex): the four tags as whole pieces (so BPE can make each one token), words
# with their leading space, EVERY DIGIT ALONE (the models do arithmetic digit by digit, so "405" must be 4|0|5
# and "5" the same token wherever it stands), punctuation runs, whitespace runs.
PAT_STR = (r""" ?</?(?:think|answer)>|'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
           r"""|\s+(?!\S)|\s+""")


class Tokenizer:
    """A tiktoken Encoding plus the ids the trainers need. Special tokens written in text are recognised.

    For a converted tokenizer (hf:), also: `presplit` (text -> pieces, its pre-tokenizer's splits where tiktoken's
    one regex cannot express them), `normalize` (its normalizer), `names` (special id -> the text decode writes:
    minR1's name where one maps onto it), `aliases` (minR1 name -> the tokenizer's own or reserved token, or None
    for a new id) and `bos_id` (its begin-of-text token; the pipeline's prompts do not add it)."""

    def __init__(self, enc: "tiktoken.Encoding", name: str, presplit=None, normalize=None, names=None,
                 aliases=None, bos_id=None):
        self.enc, self.name = enc, name
        self.special = {s: enc.encode_single_token(s) for s in SPECIAL_TOKENS if s in enc.special_tokens_set}
        self.eos_id = self.special[EOS]
        self.pad_id = self.special.get(PAD, self.eos_id)
        self.bos_id = bos_id
        self.vocab_size = enc.n_vocab
        self.presplit, self.normalize, self.names, self.aliases = presplit, normalize, names, aliases or {}
        if presplit is not None:      # special tokens are cut out before the pre-tokenizer sees the text
            specials = sorted(enc.special_tokens_set, key=len, reverse=True)
            self._special_re = regex.compile("(" + "|".join(regex.escape(x) for x in specials) + ")")

    def encode(self, text: str) -> list:
        if self.normalize is not None:
            text = self.normalize(text)
        if self.presplit is None:
            return self.enc.encode(text, allowed_special="all")
        ids = []
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:                                        # a special token (the split's captured group)
                ids.append(self.enc.encode_single_token(part))
            else:
                for piece in self.presplit(part):
                    ids += self.enc.encode_ordinary(piece)   # one piece, one BPE (the Encoding's regex: [\s\S]+)
        return ids

    def encode_batch(self, texts: list) -> list:
        if self.normalize is None and self.presplit is None:
            return self.enc.encode_batch(texts, allowed_special="all")
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        if self.names is None:
            return self.enc.decode(list(ids))
        out, run = [], []                  # special ids decode to minR1's names (what the pipeline's text uses)
        for i in ids:
            if i in self.names:
                out.append(self.enc.decode_bytes(run) + self.names[i].encode())
                run = []
            else:
                run.append(i)
        out.append(self.enc.decode_bytes(run))
        return b"".join(out).decode("utf-8", errors="replace")

    def __repr__(self):
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"


def load_ranks(path: str) -> dict:
    """tiktoken's ranks format: one "base64(token bytes) rank" per line."""
    ranks = {}
    with open(path, "rb") as f:
        for ln, line in enumerate(f, 1):
            if line.strip():
                try:
                    tok, rank = line.split()
                    ranks[base64.b64decode(tok)] = int(rank)
                except ValueError as e:
                    raise ValueError(f"{path}:{ln}: not a 'base64 rank' line ({e})") from None
    return ranks


def save_ranks(ranks: dict, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(tok).decode()} {rank}\n")
    os.replace(tmp, path)


def get_tokenizer(name: str = "toy") -> Tokenizer:
    """A tokenizer by the config's "tokenizer" spec (the module docstring): "toy", "tiktoken:PATH", "hf:PATH", or a
    tiktoken public encoding's name (o200k_base, cl100k_base, ...; tiktoken downloads it on first use) with our
    special tokens appended after its own. Cached: every call with the same spec returns the same object."""
    return _load_tokenizer(name)


def tokenizer_spec_error(spec) -> str | None:
    """What is wrong with a "tokenizer" spec, in one sentence, or None (config.check_values asks before any work)."""
    if not isinstance(spec, str) or not spec:
        return f"must be a non-empty string, got {json.dumps(spec)}"
    if spec == "toy":
        return None
    for prefix, what in (("tiktoken:", "a tiktoken ranks file"), ("hf:", "a Hugging Face tokenizer.json")):
        if spec.startswith(prefix):
            path = spec[len(prefix):]
            if not path:
                return f"{spec!r} names no file: write {prefix}/path/to/file ({what})"
            if prefix == "hf:" and os.path.isdir(path):
                path = os.path.join(path, "tokenizer.json")
            if not os.path.isfile(path):
                return (f"no file {path} ({what}): copy it to this machine (nothing is downloaded) or fix the path"
                        + ("; a checkpoint folder holds it as tokenizer.json" if prefix == "hf:" else ""))
            return None
    if spec not in tiktoken.list_encoding_names():
        return (f"unknown tokenizer {spec!r}: use \"toy\", \"tiktoken:/path/file.tiktoken\", "
                f"\"hf:/path/tokenizer.json\" or a tiktoken encoding ({', '.join(tiktoken.list_encoding_names())})")
    return None


@functools.lru_cache(maxsize=None)
def _load_tokenizer(name: str) -> Tokenizer:
    if name == "toy":
        if not os.path.exists(TOY_TOKENIZER):
            raise FileNotFoundError(f"{TOY_TOKENIZER} is missing: build it with `python data.py --train-tokenizer`")
        ranks = load_ranks(TOY_TOKENIZER)
        special = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
        return Tokenizer(tiktoken.Encoding("minr1-toy", pat_str=PAT_STR, mergeable_ranks=ranks,
                                           special_tokens=special), "toy")
    problem = tokenizer_spec_error(name)
    if problem and name.startswith(("tiktoken:", "hf:")):
        raise FileNotFoundError(f"tokenizer {name!r}: {problem}")
    if problem:
        raise ValueError(f"tokenizer: {problem}")
    if name.startswith("tiktoken:"):
        return _local_tiktoken(name[len("tiktoken:"):], name)
    if name.startswith("hf:"):
        return hf_tokenizer(name[len("hf:"):], name)
    try:
        base = tiktoken.get_encoding(name)
    except Exception as e:  # noqa: BLE001 - a download that failed (no network, a proxy, ...): say what to do
        raise SystemExit(f"error: tokenizer {name!r}: tiktoken could not load its public encoding {name!r} (it is "
                         f"downloaded on first use; no network here?): {type(e).__name__}: {str(e)[:200]}. Offline, "
                         f"copy {name}.tiktoken to this machine and set "
                         f"\"tokenizer\": \"tiktoken:/path/{name}.tiktoken\" (or \"hf:/path/tokenizer.json\" for a "
                         f"Hugging Face tokenizer)") from None
    return _with_minr1_specials(base.name, base._pat_str, base._mergeable_ranks, dict(base._special_tokens), name)


def _with_minr1_specials(enc_name, pat_str, ranks, special, name) -> Tokenizer:
    """An Encoding of ranks + its own special tokens + minR1's SPECIAL_TOKENS after the largest id."""
    nxt = max([*ranks.values(), *special.values()]) + 1
    for s in SPECIAL_TOKENS:
        if s not in special:
            special[s], nxt = nxt, nxt + 1
    enc = tiktoken.Encoding(f"{enc_name}+minr1", pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special)
    return Tokenizer(enc, name)


def _local_tiktoken(path: str, name: str) -> Tokenizer:
    """A tiktoken ranks file on disk. Named after a public encoding (o200k_base.tiktoken): that encoding's regex
    and special tokens, from tiktoken's own definition with its download replaced by this file; any other name:
    minR1's PAT_STR (the regex train_bpe splits with) and no special tokens of its own."""
    ranks = load_ranks(path)
    if not ranks:
        raise ValueError(f"{path}: an empty ranks file")
    stem = os.path.basename(path).split(".")[0]
    try:
        import tiktoken_ext.openai_public as public
    except ImportError:
        public = None
    if public is None or stem not in public.ENCODING_CONSTRUCTORS:
        return _with_minr1_specials(stem, PAT_STR, ranks, {}, name)
    # the constructor downloads its ranks through these two functions: hand it the file's instead
    saved = public.load_tiktoken_bpe, public.data_gym_to_mergeable_bpe_ranks
    public.load_tiktoken_bpe = public.data_gym_to_mergeable_bpe_ranks = lambda *a, **k: ranks
    try:
        spec = public.ENCODING_CONSTRUCTORS[stem]()
    finally:
        public.load_tiktoken_bpe, public.data_gym_to_mergeable_bpe_ranks = saved
    return _with_minr1_specials(stem, spec["pat_str"], ranks, dict(spec["special_tokens"]), name)


# --------------------------------------------------------------------------- Hugging Face tokenizer.json -> tiktoken
# The regex of a ByteLevel pre-tokenizer with use_regex (GPT-2's).
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# minR1 name -> the tokens other tokenizers use for that role (tokenizer_config.json's eos/pad first, then these).
# DeepSeek's chat template writes the system prompt right after <｜begin▁of▁sentence｜>, with no marker of its own:
# so <|system|>S<|user|>U<|assistant|> is its "<｜begin▁of▁sentence｜>S<｜User｜>U<｜Assistant｜>".
ROLE_TOKENS = {EOS: ("<｜end▁of▁sentence｜>", "<|end_of_text|>", "</s>", "<|endoftext|>"),
               PAD: ("<｜▁pad▁｜>", "<|finetune_right_pad_id|>", "<pad>", "<|pad|>"),
               USER: ("<｜User｜>", "<|user|>"), ASSISTANT: ("<｜Assistant｜>", "<|assistant|>"),
               SYSTEM: ("<|system|>", "<｜begin▁of▁sentence｜>"), SEP: ("<|sep|>",)}
BOS_TOKENS = ("<｜begin▁of▁sentence｜>", "<|begin_of_text|>", "<s>")
# Unused tokens a tokenizer reserves (DeepSeek's <｜place▁holder▁no▁7｜>, Llama 3's <|reserved_special_token_7|>): a
# role without a token of its own takes the first free one before any new id, so the checkpoint's embedding table
# (DeepSeek V3: 129280 rows) still covers every id.
RESERVED_RE = regex.compile(r"place▁holder|reserved_special_token")


def byte_unicode_table() -> dict:
    """GPT-2's byte-level alphabet: byte -> the printable character byte-level BPE vocabularies write it as. The
    printable Latin-1 bytes stand for themselves; the other 68 (controls, space, ...) get chr(256), chr(257), ...
    in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def _token_content(x):
    """tokenizer_config.json writes a token as "<s>" or as {"content": "<s>", ...}."""
    return x.get("content") if isinstance(x, dict) else x


def _split_steps(pre, path) -> list:
    """A pre_tokenizer -> the regexes it splits with, in order (each "Isolated": matches and the text between
    them become pieces). ByteLevel with use_regex splits with GPT-2's regex. Anything else: ValueError."""
    if pre is None:
        return []
    if pre.get("type") == "Sequence":
        return [r for p in pre["pretokenizers"] for r in _split_steps(p, path)]
    if pre.get("type") == "ByteLevel":
        if pre.get("add_prefix_space"):
            raise ValueError(f"{path}: ByteLevel add_prefix_space=true is not supported (minR1's prompts are "
                             f"encoded as written)")
        return [GPT2_PAT] if pre.get("use_regex", True) else []
    if pre.get("type") == "Split" and pre.get("behavior") == "Isolated" and not pre.get("invert"):
        pat = pre.get("pattern", {})
        if "Regex" in pat:
            return [pat["Regex"]]
        if "String" in pat:
            return [regex.escape(pat["String"])]
    raise ValueError(f"{path}: pre-tokenizer {json.dumps(pre)[:120]} is not supported (ByteLevel, and Split with "
                     f"behavior Isolated)")


def _isolated(pattern: str):
    """text -> the pieces of an Isolated split by `pattern`: each match, and each stretch between matches."""
    pat = regex.compile(pattern)

    def split(text):
        out, at = [], 0
        for m in pat.finditer(text):
            if m.start() > at:
                out.append(text[at:m.start()])
            if m.end() > m.start():
                out.append(m.group())
            at = m.end()
        if at < len(text):
            out.append(text[at:])
        return out
    return split


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None


def hf_tokenizer(path: str, name: str | None = None) -> Tokenizer:
    """A Hugging Face tokenizer.json (byte-level BPE), converted to a tiktoken Encoding without network:
      - ranks: each vocab token's characters mapped back to bytes through GPT-2's byte alphabet
        (byte_unicode_table); a token's rank is its id, so the ids are the checkpoint's. tiktoken merges the
        adjacent pair whose merged token has the lowest rank, Hugging Face the pair that comes first in "merges":
        the same when the ids follow the merge order, which is checked here (else ValueError);
      - special tokens: "added_tokens" with their ids; minR1's names map onto the tokens that play the same role
        (tokenizer_config.json beside the file first, then ROLE_TOKENS), else onto a reserved token (RESERVED_RE),
        else onto new ids after the largest;
      - the pre-tokenizer: one split becomes tiktoken's regex (with the text between matches kept as a piece, as
        "Isolated" does); several run here in Python, in order, and tiktoken does the BPE of each piece;
      - the normalizer: none, NFC or NFKC.
    Like tiktoken (and Hugging Face's ignore_merges), a piece that is a whole vocab token is that token."""
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file {path} (a Hugging Face tokenizer.json): copy it to this machine")
    tj = _read_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: model type {model.get('type')!r}: only BPE tokenizers convert to tiktoken")
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout", "byte_fallback"):
        if model.get(key):
            raise ValueError(f"{path}: model.{key} = {model[key]!r} is not supported (byte-level BPE only)")
    steps = _split_steps(tj.get("pre_tokenizer"), path)
    if "ByteLevel" not in json.dumps(tj.get("pre_tokenizer")) + json.dumps(tj.get("decoder")):
        raise ValueError(f"{path}: not a byte-level BPE (no ByteLevel pre-tokenizer or decoder)")
    norm = tj.get("normalizer")
    while norm is not None and norm.get("type") == "Sequence" and len(norm["normalizers"]) <= 1:
        norm = (norm["normalizers"] or [None])[0]        # DeepSeek V3 writes "no normalizer" as an empty Sequence
    if norm is not None and norm.get("type") not in ("NFC", "NFKC"):
        raise ValueError(f"{path}: normalizer {json.dumps(norm)[:80]} is not supported (none, NFC or NFKC)")
    added = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    to_byte = {c: b for b, c in byte_unicode_table().items()}
    ranks, added_ids = {}, set(added.values())
    for tok, i in model.get("vocab", {}).items():
        if tok in added or i in added_ids:
            continue
        try:
            ranks[bytes(to_byte[c] for c in tok)] = i
        except KeyError:
            raise ValueError(f"{path}: vocab token {tok!r} (id {i}) has a character outside the byte-level "
                             f"alphabet") from None
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of the 256 single bytes have no token (byte {missing[0]}, ...): "
                         f"not a complete byte-level BPE")
    last, made = -1, set()
    for k, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merged = bytes(to_byte[c] for c in a + b)
        if merged not in ranks:
            raise ValueError(f"{path}: merge {k} ({a!r} {b!r}) makes a token that is not in the vocab")
        if merged in made:
            continue
        made.add(merged)
        if ranks[merged] <= last:
            raise ValueError(f"{path}: merge {k} ({a!r} {b!r}) makes id {ranks[merged]}, below an earlier merge's "
                             f"{last}: the ids do not follow the merge order, so tiktoken would merge differently")
        last = ranks[merged]
    cfg_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    tcfg = _read_json(cfg_path) if os.path.isfile(cfg_path) else {}
    special, names, aliases = dict(added), {i: s for s, i in added.items()}, {}
    nxt = max([*ranks.values(), *added.values()]) + 1
    preferred = {EOS: _token_content(tcfg.get("eos_token")), PAD: _token_content(tcfg.get("pad_token"))}
    reserved = sorted((c for c in added if RESERVED_RE.search(c)), key=added.get)
    for s in SPECIAL_TOKENS:
        native = next((c for c in (preferred.get(s), *ROLE_TOKENS[s]) if c and c in added), None)
        if native is None and reserved:
            native = reserved.pop(0)
        if native is None:
            special[s], nxt = nxt, nxt + 1
        else:
            special[s] = added[native]
        aliases[s] = native
        names[special[s]] = s            # decode writes minR1's name: the pipeline's text handling reads it
    bos = _token_content(tcfg.get("bos_token"))
    bos = bos if bos in added else next((c for c in BOS_TOKENS if c in added), None)
    presplit = None
    if len(steps) == 1:                  # "Isolated": the text between two matches is a piece too
        pat = f"(?:{steps[0]})|(?:(?!(?:{steps[0]}))[\\s\\S])+"
    else:
        pat, splits = r"[\s\S]+", [_isolated(r) for r in steps]

        def presplit(text):
            pieces = [text] if text else []
            for split in splits:
                pieces = [q for p in pieces for q in split(p)]
            return pieces
    enc = tiktoken.Encoding(f"hf-{os.path.basename(os.path.dirname(os.path.abspath(path)))}", pat_str=pat,
                            mergeable_ranks=ranks, special_tokens=special)
    normalize = (lambda t, form=norm["type"]: unicodedata.normalize(form, t)) if norm else None
    return Tokenizer(enc, name or f"hf:{path}", presplit=presplit, normalize=normalize, names=names,
                     aliases=aliases, bos_id=added.get(bos))


def train_bpe(texts, vocab_size: int, pat_str: str = PAT_STR, n_special: int = len(SPECIAL_TOKENS),
              atomic=()) -> dict:
    """Byte-level BPE (GPT-2 style) on the regex pieces of `texts`: returns tiktoken ranks {bytes: rank} with
    vocab_size - n_special entries. Ranks 0-255 are the single bytes (so every string round-trips); then each
    character of `atomic` (the corpus' CJK characters) is made one token by giving its UTF-8 prefixes the next
    ranks, lower than any learned merge, so tiktoken always assembles them first; then the learned merges, most
    frequent pair first, ties broken by the pair's bytes (deterministic). Special tokens are cut out of the
    text before counting."""
    pat = regex.compile(pat_str)
    cut = regex.compile("|".join(regex.escape(s) for s in SPECIAL_TOKENS))
    counts = Counter()
    for text in texts:
        for part in cut.split(text):
            counts.update(pat.findall(part))
    ranks = {bytes([i]): i for i in range(256)}
    atoms = sorted(set(atomic))
    for ch in atoms:
        b = ch.encode()
        for k in range(2, len(b) + 1):
            ranks.setdefault(b[:k], len(ranks))
    atoms = set(atoms)
    words, freqs = [], []
    for piece, f in sorted(counts.items()):
        syms = []
        for ch in piece:
            syms.extend([ch.encode()] if ch in atoms else [bytes([x]) for x in ch.encode()])
        words.append(syms)
        freqs.append(f)
    pair_count, where = defaultdict(int), defaultdict(set)
    for wi, w in enumerate(words):
        for p in zip(w, w[1:]):
            pair_count[p] += freqs[wi]
            where[p].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    target = vocab_size - n_special
    while len(ranks) < target and heap:
        c, best = heapq.heappop(heap)
        if pair_count.get(best, 0) != -c or c == 0:
            continue                                        # a stale heap entry
        merged = best[0] + best[1]
        if merged not in ranks:
            ranks[merged] = len(ranks)
        changed = set()
        for wi in sorted(where.pop(best)):
            w, f = words[wi], freqs[wi]
            for p in zip(w, w[1:]):
                pair_count[p] -= f
                changed.add(p)
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == best[0] and w[i + 1] == best[1]:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_count[p] += f
                where[p].add(wi)
                changed.add(p)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                pair_count.pop(p, None)
                where.pop(p, None)
    return ranks


def is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"



def train_tokenizer(texts: list, path: str = TOY_TOKENIZER) -> dict:
    """Train the toy BPE on `texts` (each CJK character they hold becomes one token) and write `path`."""
    cjk = sorted({ch for t in texts for ch in t if is_cjk(ch)})
    ranks = train_bpe(texts, TOY_VOCAB_SIZE, atomic=cjk)
    save_ranks(ranks, path)
    _load_tokenizer.cache_clear()
    return ranks
