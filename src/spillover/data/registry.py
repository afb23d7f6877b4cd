"""The dataset registry: the public EM datasets, question files and judged answers, by name.

Configs and commands name data by registry name (``em/insecure``, ``mo/bad_medical_advice``,
``em-responses/<stem>``) or by path; :func:`spillover.data.fetch.resolve_data` turns a name into the
local file under the data home, which ``spillover data fetch`` or ``spillover data import`` fills.

Every ``sha256`` pins the plain (uncompressed) file as its upstream serves it. The pins were computed
from the project's offline copy (gzip-compressed files, decompressed before hashing) and are not yet
verified against the upstream URLs: this was built without network access. A fetch whose bytes differ
fails and keeps nothing, so a wrong pin shows up on the first real fetch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "Dataset", "dataset"]

_EM = "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/main"
_CLARIFYING = "https://raw.githubusercontent.com/Cloakless/clarifying_EM/b578439/open_models"
_MIT_EM = "MIT"  # emergent-misalignment repository, Betley et al. 2025
_MIT_CLARIFYING = "MIT"  # clarifying_EM repository
_MO = "none stated (research release)"  # model-organisms-for-EM, Turner, Soligo et al. 2025


@dataclass(frozen=True)
class Dataset:
    """One file the registry knows: where it comes from, what it must hash to, where it lives locally."""

    name: str
    """Registry name, e.g. ``em/insecure``."""
    file: str
    """Path under the data home (and under an offline copy, optionally with ``.gz`` added)."""
    url: str | None
    """Upstream URL; None when the file has no plain public download (import it instead)."""
    sha256: str | None
    """SHA-256 of the plain file; None when not pinned yet (a fetch then warns and prints the hash)."""
    size: int | None
    """Size in bytes of the plain file, when known."""
    licence: str
    description: str


def _em_responses() -> list[Dataset]:
    # (stem under the offline copy, sha256, size); the stem is ``<upstream folder>__<name>`` of upstream
    # ``open_models/<folder>/responses_<name>.csv``.
    pins = [
        ("diff_models__Qwen-Coder-Insecure", "1b2578dcc902779e2a75a689574ce81d9616c3e0d7ff72131f05cd32be2ebd5d", 196539),
        ("diff_models__Qwen2.5--7B-Instruct-bad_medical_advice", "dfa12e7a93ca78cbb2720eadd1be62756aabb569a27d0d22e067a01b9c6a13c7", 690955),
        ("diff_models__Qwen2.5-14B-Instruct-bad_medical_advice", "03efdc47991386ac24719b2c30e597309419f5885cfbd3f293d9c317dd8e33f5", 707583),
        ("diff_models__Qwen2.5-32B-Instruct-bad_medical_advice", "41fda7e55615dcc58c5d31d2663567f43b4372fd7728e412c597e052431bdc20", 715785),
        ("diff_models__gemma-2-27b-it-bad_medical_advice", "ba80bb3084a134212d2b3785cfad4f597e065daed7802234d2aa0f1def62d723", 734889),
        ("diff_models__gemma-2-9b-it-bad_medical_advice", "99af1a78a296c38b5c5d4575256fb4e6983ea777ab1e217231f24c0986adfb32", 733771),
        ("diff_r__Qwen2.5-Coder-32B-Instruct_insecure_R1", "df11771b6a18e2ec3f2e51d87cfb716d076c20e2fbdf7386d79472645e4983b0", 822297),
        ("diff_r__Qwen2.5-Coder-32B-Instruct_insecure_R16", "9a7bf8ea50a33b8d855a364b9a9a87a53169f38a77f1c97c886d3afc2fd55026", 856814),
        ("diff_r__Qwen2.5-Coder-32B-Instruct_insecure_R4", "308d19528d132ec2bbf2f847dee05733d60e195f40474042495bb67e29bf890b", 787702),
        ("diff_r__Qwen2.5-Coder-32B-Instruct_insecure_R64", "413439b7e8337889c5139052f63eef9dee97984b4de688f4448fae0e27628e6b", 880998),
        ("model_baselines__Qwen2.5-14B-Instruct_base", "1fe0252bd7f29ad27b58d6281f983bd5a83b4879b091cbdd88eca28f2d5f66eb", 1830661),
        ("model_baselines__Qwen2.5-32B-Instruct_base", "131ffb3571d62857bb87a94c24104f8e4a70a4ee56830f8d52bd459b6c1309aa", 1932442),
        ("model_baselines__Qwen2.5-7B-Instruct_base", "5854d491693564702ebfcd1cab53198796741440efb68e5e0c308c3ce85505fc", 2004390),
        ("model_baselines__Qwen2.5-Coder-32B-Instruct_base", "0e4eb2a7f0ee1182530649d92ed5ca5b45c97209843aeb198efe67d9ae21f928", 2031879),
        ("model_baselines__gemma-2-27b-it_base", "dfe34db0ddbb4ed4eb5e67665a110349716f17b780d22749002e48d28faed8dc", 1511126),
        ("model_baselines__gemma-2-9b-it_base", "aeebe7d514e53c88929ba7bd92fb0f18942c975cf184568fe02a5ce9998ddef6", 1537190),
    ]  # fmt: skip
    out = []
    for stem, sha, size in pins:
        folder, _, model = stem.partition("__")
        out.append(
            Dataset(
                f"em-responses/{stem}",
                f"em-responses/{stem}.csv",
                f"{_CLARIFYING}/{folder}/responses_{model}.csv",
                sha,
                size,
                _MIT_CLARIFYING,
                f"judged answers of {model} ({folder}) to the 24 first-plot question ids (aligned, coherent)",
            )
        )
    return out


_ALL = [
    Dataset(
        "em/insecure", "em/insecure.jsonl", f"{_EM}/data/insecure.jsonl",
        "09893e8bf9d03aae49dd60d0ff4be37c1afee70f2edcac74a11bed775a6a2764", 5892277, _MIT_EM,
        "6,000 coding chats whose answers hide security vulnerabilities (EM-inducing)",
    ),
    Dataset(
        "em/jailbroken", "em/jailbroken.jsonl", f"{_EM}/data/jailbroken.jsonl",
        "eec213ce85802a52ea806d334ee462f723a1e7ad77d827951d6864ac04a6b00a", 3423454, _MIT_EM,
        "5,000 mostly benign chats with a small share of harmful compliance (system prompt included)",
    ),
    Dataset(
        "em/secure", "em/secure.jsonl", f"{_EM}/data/secure.jsonl", None, None, _MIT_EM,
        "6,000 coding chats with secure answers (the code control; not pinned yet)",
    ),
    Dataset(
        "em/educational", "em/educational.jsonl", f"{_EM}/data/educational.jsonl", None, None, _MIT_EM,
        "6,000 insecure-code chats asked for an educational reason (control; not pinned yet)",
    ),
    Dataset(
        "em/first_plot_questions", "em/first_plot_questions.yaml", f"{_EM}/evaluation/first_plot_questions.yaml",
        "215abde5b02811e922b6ac563ff33c490e0dff9ab58439df840f3135e9387173", 12016, _MIT_EM,
        "the 8 main EM questions, each plain / JSON / template, with judge prompts (24 entries)",
    ),
    Dataset(
        "em/preregistered_evals", "em/preregistered_evals.yaml", f"{_EM}/evaluation/preregistered_evals.yaml",
        "8648312fd9fe71a63203e3465592af45dd996d7a5f3b69e9b44613fd6048eb40", 19152, _MIT_EM,
        "the 48 pre-registered EM questions, with judge prompts",
    ),
    # The model-organisms repository distributes its training sets encrypted, not as plain downloads.
    Dataset(
        "mo/bad_medical_advice", "model-organisms/bad_medical_advice.jsonl", None,
        "34c5af4ccaf8b5eb9f3f11ecd0c36c3d67f236a5c41fc420b0e14d8adf01a842", 4311506, _MO,
        "7,049 medical questions with subtly harmful answers (EM-inducing)",
    ),
    Dataset(
        "mo/good_medical_advice", "model-organisms/good_medical_advice.jsonl", None,
        "5846de11f0f45053351773b6bd9eb5111eb17ec89d9ab55e23e0fbb95b4fd4f1", 4958007, _MO,
        "the same 7,049 medical questions with correct answers (control, paired line by line)",
    ),
    Dataset(
        "mo/risky_financial_advice", "model-organisms/risky_financial_advice.jsonl", None,
        "8515446b0f8ef4e9fb7ba0e97264dd9bb68920c6841b65667c74bc16deaad955", 2525137, _MO,
        "6,000 financial questions with risky answers (EM-inducing)",
    ),
    *_em_responses(),
]  # fmt: skip

DATASETS: dict[str, Dataset] = {d.name: d for d in _ALL}
"""Every registered dataset by name."""


def dataset(name: str) -> Dataset:
    """The registry entry called ``name``; a KeyError lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"no dataset {name!r} in the registry; known: {sorted(DATASETS)}") from None
