"""Real coding agents drive ``step35 serve``: Claude Code (Anthropic Messages) and Codex CLI (OpenAI Responses).

Both CLIs come from npm at the versions pinned in ``tests/agents/package.json``
(``npm ci --prefix tests/agents``; CI installs them and sets
``STEP35_REQUIRE_AGENTS=1``, so there a missing install fails instead of
skipping). Each runs one prompt, offline, against a loopback ``step35 serve``
on the tiny-agent model with a 32k context, through a recording proxy: every
request it sends (path, headers, size) goes to the test log, and any request
the server does not answer with 200 fails the test. The agent must exit 0 and
print the model's answer. The CLIs' own telemetry, update checks and retries
are switched off, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the server extra is not installed (tests/requirements.txt)")

from agent_proxy import RecordingProxy  # noqa: E402
from step35 import testing  # noqa: E402
from test_serve import KEY, Server, start_server, stop_server  # noqa: E402

AGENTS = Path(__file__).resolve().parent / "agents" / "node_modules" / ".bin"
REQUIRED = os.environ.get("STEP35_REQUIRE_AGENTS") == "1"

pytestmark = pytest.mark.slow


def agent_binary(name: str) -> Path:
    """The npm-installed CLI, or a skip (a failure where CI requires the agents)."""
    path = AGENTS / name
    if not path.exists():
        why = f"{path} is missing: npm ci --prefix tests/agents"
        if REQUIRED:
            pytest.fail(why)
        pytest.skip(why)
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH, but the agent CLIs are installed")
    return path


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``step35 serve`` on the tiny-agent model: 1 slot of 32k tokens (the agents' prompts are 10-15k)."""
    s = start_server(testing.model_path("tiny-agent"), tmp_path_factory.mktemp("agent-clis"), "-np", "1",
                     "-c", "32768", "--api-key", KEY, "--log-level", "warning")
    try:
        yield s
    finally:
        assert stop_server(s) == 0, s.log_text()


def _clean_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TERM": "dumb", "LANG": "C.UTF-8"}


def _run(argv: list[str], env: dict[str, str], cwd: Path, proxy: RecordingProxy,
         capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """Run an agent; its output and every request it sent go to the test log (not captured)."""
    out = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=600)
    with capsys.disabled():
        print(f"\n$ {' '.join(argv)}\nexit {out.returncode}\n--- stdout\n{out.stdout}\n--- stderr\n"
              f"{out.stderr[-3000:]}\n--- requests (method, path, status, size, headers)")
        for line in proxy.summary():
            print(line)
    return out


def _check_requests(proxy: RecordingProxy, route: str) -> None:
    requests = proxy.requests
    assert requests, "the agent sent no request"
    unanswered = [r.line() for r in requests if r.status != 200]
    assert not unanswered, f"requests the server did not answer with 200: {unanswered}"
    assert any(r.path == route for r in requests), [r.line() for r in requests]


def test_claude_code_prints_the_models_answer(agent_server: Server, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    claude = agent_binary("claude")
    env = _clean_env(tmp_path)
    with RecordingProxy(agent_server.url) as proxy:
        env.update(CLAUDE_CONFIG_DIR=str(tmp_path / ".claude"), ANTHROPIC_BASE_URL=proxy.url, ANTHROPIC_API_KEY=KEY,
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1", DISABLE_TELEMETRY="1",
                   DISABLE_ERROR_REPORTING="1", CLAUDE_CODE_MAX_RETRIES="0")
        out = _run([str(claude), "-p", "Say hello.", "--model", "step35"], env, tmp_path, proxy, capsys)
    _check_requests(proxy, "/v1/messages")
    big = max(proxy.requests, key=lambda r: len(r.body))
    assert big.header("anthropic-version") and len(big.body) > 20_000  # the real agent prompt, tools and all
    assert out.returncode == 0, out.stderr
    assert testing.AGENT_ANSWER in out.stdout


def test_codex_prints_the_models_answer(agent_server: Server, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    codex = agent_binary("codex")
    home = tmp_path / "codex"
    home.mkdir()
    env = _clean_env(tmp_path)
    with RecordingProxy(agent_server.url) as proxy:
        (home / "config.toml").write_text(
            'model = "step35"\nmodel_provider = "step35"\ncheck_for_update_on_startup = false\n\n'
            "[model_providers.step35]\n"
            f'name = "step35 serve"\nbase_url = "{proxy.url}/v1"\nwire_api = "responses"\n'
            'env_key = "STEP35_API_KEY"\nrequest_max_retries = 0\nstream_max_retries = 0\n\n'
            "[features]\nplugins = false\n\n[analytics]\nenabled = false\n")
        env.update(CODEX_HOME=str(home), STEP35_API_KEY=KEY)
        work = tmp_path / "work"
        work.mkdir()
        out = _run([str(codex), "exec", "--skip-git-repo-check", "Say hello."], env, work, proxy, capsys)
    _check_requests(proxy, "/v1/responses")
    big = max(proxy.requests, key=lambda r: len(r.body))
    assert big.json()["include"] == ["reasoning.encrypted_content"] and len(big.body) > 20_000
    assert out.returncode == 0, out.stderr
    assert testing.AGENT_ANSWER in out.stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-s", "-v"]))
