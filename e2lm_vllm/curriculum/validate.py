"""The E2LM competition's rules for a submitted task, checked on items and on a written task folder.

Rules (from the competition's submission guidelines):

- ``size``: 100 to 15,000 samples;
- ``length``: prompt plus continuation at most 2,048 tokens, for every choice of every item;
- ``leak``: the prompt must not give the answer away;
- ``english``: the task is in English;
- ``pure_yaml`` (ours, for the folder): the task YAML is plain YAML (no ``!function``, no Python
  files), so it loads in the organisers' lm-eval fork without our package.

How each is checked:

- length: the prompt is rendered from the task's own ``description`` and ``doc_to_text`` with
  jinja2, as lm-eval does, and joined to each choice with the target delimiter. Byte-level BPE and
  SentencePiece byte-fallback tokenizers never make more tokens than UTF-8 bytes, so a text of at
  most ``max_tokens`` bytes passes without a tokenizer; longer ones are counted with the given
  tokenizer (default: the embedded SmolLM2 tokenizer, a stand-in for the organisers' own).
- leak: the gold answer text (normalised: lower case, single spaces, outer punctuation removed,
  at least 3 characters) occurs in the prompt as whole words while no other choice does. If the
  prompt quotes every option (e.g. "true or false?"), nothing is singled out, so that is no leak.
- english: per item (question and choices), letters must be mostly ASCII (>= 80 %), and a text of
  6 words or more must not hold more function words of French, German, Spanish, Italian, Portuguese
  or Dutch than of English. A heuristic (no language-identification model is available offline):
  on the 14,042 MMLU test items it flags none, and it flags plain sentences in those languages.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from e2lm_vllm.curriculum.layout import Manifest, read_items


class CompetitionRules(BaseModel):
    """Limits of the competition; tests lower ``min_samples`` to build tiny curricula."""

    model_config = ConfigDict(frozen=True)

    min_samples: int = Field(100, ge=1)
    max_samples: int = Field(15_000, ge=1)
    max_tokens: int = Field(2048, ge=1)
    min_ascii_letter_share: float = 0.8


@dataclass(frozen=True)
class PromptFormat:
    """What lm-eval puts before each choice: ``description + doc_to_text + target_delimiter``."""

    doc_to_text: str
    description: str = ""
    target_delimiter: str = " "

    @functools.cached_property
    def _templates(self) -> tuple[jinja2.Template, jinja2.Template]:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        return env.from_string(self.description), env.from_string(self.doc_to_text)

    def prompt(self, doc: dict[str, Any]) -> str:
        description, text = self._templates
        return description.render(**doc) + text.render(**doc)

    def continuations(self, doc: dict[str, Any]) -> list[str]:
        return [self.target_delimiter + str(choice) for choice in doc["choices"]]


@dataclass
class RuleResult:
    rule: str
    ok: bool
    detail: str
    offending: list[str] = field(default_factory=list)  # "subject/doc_id" of offending items


@dataclass
class ValidationReport:
    results: list[RuleResult]
    n_samples: int

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    def failed(self) -> list[str]:
        return [result.rule for result in self.results if not result.ok]

    def describe(self) -> str:
        lines = [f"{self.n_samples} samples"]
        for result in self.results:
            mark = "ok  " if result.ok else "FAIL"
            lines.append(f"{mark} {result.rule}: {result.detail}")
            if result.offending:
                shown = ", ".join(result.offending[:8])
                more = f" and {len(result.offending) - 8} more" if len(result.offending) > 8 else ""
                lines.append(f"     items: {shown}{more}")
        return "\n".join(lines)


class ValidationError(ValueError):
    """A task folder that cannot be validated (missing files, unreadable YAML)."""


# --------------------------------------------------------------------------- per-item checks

_FUNCTION_WORDS = frozenset(
    """a an the of and or but not no nor to in on at by for from with without into onto over under
    about after before between during through than then that this these those there here which
    who whom whose what when where why how is are was were be been being am do does did has have
    had can could will would shall should may might must it its they them their he she his her
    we our you your i me my if as so such all any each every both either neither some most more
    other another one only also very same following true false""".split()
)
# Frequent function words of the other Latin-script languages an item is likely to be in; words
# that are also English ("die", "a", "in", "on", "so", "is") are left out.
_FOREIGN_FUNCTION_WORDS = frozenset(
    """le la les des du et est une que qui dans pour pas sur au aux avec sont ce cette ces
    der das und ist ein eine nicht mit von zu den dem des ich sie wir ihr sind wird auf oder
    el los las y es por para con una del se lo como pero más está son
    il di che della delle sono gli una non
    os da do em um uma não com são
    het een van en ik zijn niet met voor op""".split()
) - _FUNCTION_WORDS
_WORD = re.compile(r"[^\W\d_]+")


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip(" \t\n.,;:!?\"'()[]")


def _contains_words(haystack: str, needle: str) -> bool:
    return re.search(r"(?<![a-z0-9])" + re.escape(needle) + r"(?![a-z0-9])", haystack) is not None


def leaks_answer(prompt: str, choices: list[str], answer: int) -> bool:
    """True if the prompt contains the gold choice's text and no other choice's (see module doc)."""
    text = _normalise(prompt)
    gold = _normalise(str(choices[answer]))
    if len(gold) < 3 or not _contains_words(text, gold):
        return False
    others = [_normalise(str(choice)) for i, choice in enumerate(choices) if i != answer]
    # A distractor that contains the gold text (gold "cell", other "cell wall") explains the match.
    if any(gold in other for other in others):
        return False
    return not any(len(other) >= 1 and _contains_words(text, other) for other in others)


def looks_english(text: str, rules: CompetitionRules = CompetitionRules()) -> bool:
    """Heuristic English check of one text (see module doc)."""
    letters = [char for char in text if char.isalpha()]
    if not letters:
        return True  # numbers and symbols only: nothing to judge
    if sum(char.isascii() for char in letters) / len(letters) < rules.min_ascii_letter_share:
        return False
    # LaTeX commands (\le, \frac) and one-letter variables (x, y, o) are not words of any language.
    words = [word for word in _WORD.findall(re.sub(r"\\[A-Za-z]+", " ", text).lower()) if len(word) > 1]
    if len(words) < 6:
        return True
    english = sum(word in _FUNCTION_WORDS for word in words)
    foreign = sum(word in _FOREIGN_FUNCTION_WORDS for word in words)
    return foreign <= english


TokenCounter = Callable[[str], int]


def smollm2_token_counter() -> TokenCounter:
    """Token count with the embedded SmolLM2 tokenizer (prepared offline on first use)."""
    from transformers import AutoTokenizer

    from e2lm_vllm.models.prepare import prepare_model

    tokenizer = AutoTokenizer.from_pretrained(str(prepare_model("smollm2-135m")))
    return lambda text: len(tokenizer(text, add_special_tokens=True)["input_ids"])


def tokenizer_counter(name_or_path: str) -> TokenCounter:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return lambda text: len(tokenizer(text, add_special_tokens=True)["input_ids"])


def longest_request_tokens(
    doc: dict[str, Any], fmt: PromptFormat, count_tokens: TokenCounter | None, max_tokens: int
) -> int:
    """Tokens of the longest prompt + continuation of one item, or its bytes when that already fits."""
    prompt = fmt.prompt(doc)
    longest = max((prompt + continuation for continuation in fmt.continuations(doc)), key=lambda t: len(t.encode()))
    n_bytes = len(longest.encode("utf-8"))
    if n_bytes <= max_tokens or count_tokens is None:
        return n_bytes
    return max(count_tokens(prompt + continuation) for continuation in fmt.continuations(doc))


@dataclass(frozen=True)
class ItemCheck:
    """Per-item rule outcomes, used by the builder to drop items before they reach the task."""

    too_long: bool
    leaked: bool
    non_english: bool
    tokens: int


def check_item(
    doc: dict[str, Any], fmt: PromptFormat, rules: CompetitionRules, count_tokens: TokenCounter | None
) -> ItemCheck:
    tokens = longest_request_tokens(doc, fmt, count_tokens, rules.max_tokens)
    prompt = fmt.prompt(doc)
    text = " ".join([str(doc["question"]), *map(str, doc["choices"])])
    return ItemCheck(
        too_long=tokens > rules.max_tokens,
        leaked=leaks_answer(prompt, list(doc["choices"]), int(doc["answer"])),
        non_english=not looks_english(text, rules),
        tokens=tokens,
    )


# --------------------------------------------------------------------------- whole-task checks


FormatFor = Callable[[str], PromptFormat]


def validate_items(
    items: pd.DataFrame,
    fmt: PromptFormat | FormatFor,
    rules: CompetitionRules = CompetitionRules(),
    count_tokens: TokenCounter | None = None,
) -> ValidationReport:
    """Check a table of items (subject, doc_id, question, choices, answer) against the rules.

    ``fmt``: one prompt format for all items, or a function subject -> format.
    """
    format_for = fmt if callable(fmt) else (lambda subject: fmt)
    n = len(items)
    long_items, leaked, foreign = [], [], []
    longest = 0
    for row in items.itertuples(index=False):
        doc = {"question": row.question, "subject": row.subject, "choices": list(row.choices), "answer": int(row.answer)}
        check = check_item(doc, format_for(row.subject), rules, count_tokens)
        name = f"{row.subject}/{getattr(row, 'doc_id', '?')}"
        longest = max(longest, check.tokens)
        if check.too_long:
            long_items.append(name)
        if check.leaked:
            leaked.append(name)
        if check.non_english:
            foreign.append(name)
    size_ok = rules.min_samples <= n <= rules.max_samples
    return ValidationReport(
        n_samples=n,
        results=[
            RuleResult("size", size_ok, f"{n} samples; allowed {rules.min_samples} to {rules.max_samples}"),
            RuleResult(
                "length",
                not long_items,
                f"longest prompt + continuation {longest} tokens (or bytes, when that fits); limit {rules.max_tokens}",
                long_items,
            ),
            RuleResult("leak", not leaked, f"{len(leaked)} item(s) whose prompt singles out the gold answer", leaked),
            RuleResult("english", not foreign, f"{len(foreign)} item(s) that do not look English", foreign),
        ],
    )


class _FunctionTagLoader(yaml.SafeLoader):
    """Safe loader that records ``!function`` tags instead of failing on them."""


def _function_tag(loader: yaml.Loader, node: yaml.Node) -> str:
    loader.function_tags = getattr(loader, "function_tags", 0) + 1  # type: ignore[attr-defined]
    return f"!function {loader.construct_scalar(node)}"  # type: ignore[arg-type]


_FunctionTagLoader.add_constructor("!function", _function_tag)


def load_task_yaml(path: Path) -> tuple[dict[str, Any], int]:
    """(config, number of ``!function`` tags) of one lm-eval YAML file."""
    loader = _FunctionTagLoader(path.read_text(encoding="utf-8"))
    try:
        config = loader.get_single_data() or {}
    except yaml.YAMLError as error:
        raise ValidationError(f"{path}: not valid YAML ({error})") from None
    finally:
        loader.dispose()
    return config, getattr(loader, "function_tags", 0)


def task_yaml_files(task_dir: Path) -> list[Path]:
    return sorted(p for p in task_dir.rglob("*") if p.is_file() and (p.suffix == ".yaml" or p.name.endswith("_yaml")))


def validate_task_dir(
    task_dir: str | Path,
    rules: CompetitionRules = CompetitionRules(),
    count_tokens: TokenCounter | None = None,
) -> ValidationReport:
    """Validate a folder written by ``e2lm-vllm curriculum build`` (manifest, YAML and data).

    ``count_tokens`` None: the embedded SmolLM2 tokenizer, loaded only if some text is longer
    than ``max_tokens`` bytes (bytes are only an upper bound on tokens).
    """
    if count_tokens is None:
        count_tokens = _lazy_smollm2_counter()

    task_dir = Path(task_dir)
    manifest = Manifest.read(task_dir)
    yaml_files = task_yaml_files(task_dir)
    functions = [path.name for path in yaml_files if load_task_yaml(path)[1]]
    python_files = [path.name for path in task_dir.rglob("*.py")]
    template, _ = load_task_yaml(task_dir / manifest.template_file)
    formats: dict[str, PromptFormat] = {}
    for subject in manifest.subjects:
        path = task_dir / f"{manifest.name}_{subject}.yaml"
        if not path.is_file():
            raise ValidationError(f"{path} missing: the manifest lists subject {subject!r}")
        config = {**template, **load_task_yaml(path)[0]}
        formats[subject] = PromptFormat(
            doc_to_text=config["doc_to_text"],
            description=config.get("description", ""),
            target_delimiter=config.get("target_delimiter", " "),
        )

    def format_for(subject: str) -> PromptFormat:
        if subject not in formats:
            raise ValidationError(f"the data holds subject {subject!r}, which has no task in {task_dir}")
        return formats[subject]

    items = read_items(task_dir / manifest.data_dir)
    report = validate_items(items, format_for, rules, count_tokens)
    pure = not functions and not python_files
    report.results.append(
        RuleResult(
            "pure_yaml",
            pure,
            "plain YAML only" if pure else f"!function in {functions}; Python files {python_files}",
        )
    )
    return report


def _lazy_smollm2_counter() -> TokenCounter:
    """Loads the tokenizer only if some text is longer than the byte bound."""
    counter: list[TokenCounter] = []

    def count(text: str) -> int:
        if not counter:
            counter.append(smollm2_token_counter())
        return counter[0](text)

    return count

