"""Optional LLM rewriter: real reports -> ECHO's normalised form (ECHO-SPEC §6).

Radiologists report by exception; ECHO trains on reports that state every predefined anatomical region,
positive or negative, in a Findings and an Impression section (EN or ZH). Rules cannot do that rewrite
well, so this module asks any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server,
Ollama, a hosted API) and parses the answer back with the same section parser the loaders use.

    rw = ReportRewriter(RewriterConfig(base_url="http://localhost:8000/v1", model="Qwen2.5-7B-Instruct"))
    sections = rw.rewrite("FINDINGS: No effusion. IMPRESSION: Normal.", language="en")
"""

from __future__ import annotations

import random
import re
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import httpx

from echocxr.data.manifest import LANGUAGES, Sample
from echocxr.data.sections import ReportSections, detect_language, format_report, split_report
from echocxr.errors import UserError

# The regions the official normalised ECHO reports walk through, in their order.
REGIONS: dict[str, tuple[str, ...]] = {
    "en": (
        "thorax (symmetry)",
        "mediastinum and trachea",
        "lungs (lung fields and pulmonary vasculature: opacity, consolidation, nodules, edema, "
        "effusion, pneumothorax)",
        "cardiac silhouette",
        "hila",
        "diaphragms and costophrenic angles",
        "bony structures",
    ),
    "zh": (
        "胸廓（是否对称）",
        "纵隔及气管",
        "两肺（肺纹理及肺野：密度影、实变、结节、水肿、积液、气胸）",
        "心影",
        "肺门",
        "两侧膈肌及肋膈角",
        "骨性结构",
    ),
}

_SYSTEM = {
    "en": "You rewrite chest X-ray reports into a normalised structured form. You never add findings "
    "that the source report does not support.",
    "zh": "你负责把胸部X光报告改写为规范化的结构化形式。不得添加原报告不支持的任何发现。",
}

_RULES = {
    "en": """Rewrite the chest X-ray report below into the normalised form.

Rules:
1. Output exactly two sections and nothing else, in this format:
Findings: <sentences>
Impression: <sentences>
2. In Findings, state every one of these regions explicitly, in this order, as either abnormal (with side, location and size when given) or normal: {regions}.
3. A region the source report does not mention is normal: say so explicitly.
4. Mention lines, tubes and devices with their positions if the source mentions them; otherwise leave them out.
5. Keep every abnormality in the source. Leave out comparison, indication, history and technique text.
6. The Impression gives the key conclusions in one to three sentences.
7. Write in English.

Source report:
{report}""",
    "zh": """请把下面的胸部X光报告改写为规范化形式。

要求：
1. 只输出两个部分，不要输出其他任何内容，格式如下：
所见：<句子>
结论：<句子>
2. 在“所见”中按以下顺序逐一明确描述每个部位，异常（注明侧别、位置和大小）或正常：{regions}。
3. 原报告未提及的部位视为正常，并明确写出正常。
4. 若原报告提及导管、插管或装置，写明其位置；否则不写。
5. 保留原报告中的所有异常。不要包含对比、检查指征、病史和检查技术。
6. “结论”用一到三句话给出主要诊断意见。
7. 使用中文书写。

原报告：
{report}""",
}

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_RETRY_STATUS = {408, 409, 425, 429}


class RewriteError(UserError):
    """The endpoint failed, refused, or answered in a form we cannot parse; message is one line."""


class RewriteWarning(UserWarning):
    """Emitted once by `rewrite_samples` when some reports could not be rewritten."""


@dataclass
class RewriterConfig:
    """Where the OpenAI-compatible endpoint lives and how patiently to talk to it."""

    base_url: str  # e.g. "http://localhost:8000/v1" (".../chat/completions" is also accepted)
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 3  # extra attempts on timeouts, connection errors, 408/409/425/429 and 5xx
    backoff_s: float = 1.0  # first retry waits this long, doubling each time (plus up to 25% jitter)
    max_backoff_s: float = 30.0
    temperature: float = 0.0
    max_tokens: int = 1024
    regions: tuple[str, ...] | None = None  # override REGIONS[language], e.g. to match your labeler


class ReportRewriter:
    """Rewrites one report per call; thread-safe, so `rewrite_samples` can fan out requests."""

    def __init__(self, config: RewriterConfig, client: httpx.Client | None = None):
        if not config.base_url or not config.model:
            raise RewriteError("the LLM rewriter needs a base URL and a model name")
        self.config = config
        base = config.base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self._client = client or httpx.Client(timeout=httpx.Timeout(config.timeout_s))
        self._owns_client = client is None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> ReportRewriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def messages(self, report: str, language: str = "en") -> list[dict[str, str]]:
        """The chat messages sent for `report` (exposed so prompts can be inspected and tested)."""
        if language not in LANGUAGES:
            raise RewriteError(f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)}")
        sep = "；" if language == "zh" else "; "
        regions = self.config.regions or REGIONS[language]
        user = _RULES[language].format(regions=sep.join(regions), report=report.strip())
        return [{"role": "system", "content": _SYSTEM[language]}, {"role": "user", "content": user}]

    def rewrite(
        self, report: str | None = None, *, findings: str = "", impression: str = "", language: str = "en"
    ) -> ReportSections:
        """Normalised Findings + Impression for a free-text `report` or for existing sections."""
        source = report if report is not None else format_report(findings, impression, "en")
        if not source or not source.strip():
            raise RewriteError("nothing to rewrite: the report is empty")
        payload = {
            "model": self.config.model,
            "messages": self.messages(source, language),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        answer = _message_content(self._post(payload), self.url)
        return parse_answer(answer, language)

    def _post(self, payload: dict) -> dict:
        cfg = self.config
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        reason = "no attempt made"
        for attempt in range(cfg.max_retries + 1):
            retry_after = None
            try:
                resp = self._client.post(self.url, json=payload, headers=headers, timeout=cfg.timeout_s)
            except httpx.TimeoutException:
                reason = f"timed out after {cfg.timeout_s:g}s"
            except httpx.TransportError as exc:
                reason = f"connection failed ({type(exc).__name__}: {_short(str(exc))})"
            else:
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError:
                        raise RewriteError(f"LLM endpoint {self.url} answered with non-JSON: {_short(resp.text)}") from None
                reason = f"HTTP {resp.status_code}: {_short(resp.text)}"
                if resp.status_code not in _RETRY_STATUS and resp.status_code < 500:
                    raise RewriteError(f"LLM endpoint {self.url} refused the request: {reason}")
                retry_after = _retry_after(resp)
            if attempt < cfg.max_retries:
                delay = min(cfg.max_backoff_s, cfg.backoff_s * 2**attempt) * (1 + 0.25 * random.random())
                time.sleep(min(cfg.max_backoff_s, retry_after) if retry_after is not None else delay)
        raise RewriteError(f"LLM endpoint {self.url} failed after {cfg.max_retries + 1} attempt(s): {reason}")


def parse_answer(answer: str, language: str = "en") -> ReportSections:
    """Findings + Impression out of the model's text; RewriteError if either is missing."""
    text = _THINK.sub("", answer or "").strip()
    sec = split_report(text)
    missing = [name for name in ("findings", "impression") if not getattr(sec, name)]
    if missing:
        raise RewriteError(f"malformed rewriter answer (no {' or '.join(missing)} section): {_short(text)!r}")
    if language == "zh" and detect_language(sec.findings + sec.impression) != "zh":
        raise RewriteError(f"rewriter answer is not Chinese: {_short(text)!r}")
    return ReportSections(findings=sec.findings, impression=sec.impression)


def rewrite_samples(
    samples: Sequence[Sample],
    rewriter: ReportRewriter,
    language: str | None = None,
    on_error: str = "skip",
    workers: int = 1,
) -> list[Sample]:
    """Rewrite every sample's report; `language` None keeps each sample's own.

    `on_error`: "skip" drops samples that fail, "keep" keeps them unchanged, "raise" stops at the
    first failure. Failures are summarised in ONE `RewriteWarning`. `workers` > 1 sends requests
    concurrently (the endpoint's own batching then does the heavy lifting).
    """
    if on_error not in ("skip", "keep", "raise"):
        raise RewriteError(f"on_error must be 'skip', 'keep' or 'raise', got {on_error!r}")

    def one(s: Sample) -> Sample | RewriteError:
        lang = language or s.language
        try:
            sec = rewriter.rewrite(findings=s.findings, impression=s.impression, language=lang)
        except RewriteError as exc:
            if on_error == "raise":
                raise
            return exc
        return replace(s, findings=sec.findings, impression=sec.impression, language=lang,
                       images=list(s.images), labels=list(s.labels))

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(one, samples), total=len(samples), desc="rewriting", disable=None, leave=False))
    out: list[Sample] = []
    failures: list[str] = []
    for s, r in zip(samples, results, strict=True):
        if isinstance(r, RewriteError):
            failures.append(f"{s.sample_id}: {r}")
            if on_error == "keep":
                out.append(s)
        else:
            out.append(r)
    if failures:
        action = "dropped" if on_error == "skip" else "kept unchanged"
        warnings.warn(
            f"rewriter failed on {len(failures)} of {len(samples)} report(s) ({action}); first: {failures[0]}",
            RewriteWarning,
            stacklevel=2,
        )
    return out


def _message_content(data: dict, url: str) -> str:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise RewriteError(f"LLM endpoint {url} returned no choices[0].message.content: {_short(str(data))}") from None
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise RewriteError(f"LLM endpoint {url} returned an empty answer")
    return content


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        value = float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
