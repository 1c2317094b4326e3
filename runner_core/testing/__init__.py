"""Test doubles for the model: scripted replies, never a real LLM.

Unit tests of the runtime use :class:`FakeModel`, in process (no HTTP, no ``openai`` client)::

    from runner_core.testing import FakeModel

    async def test_agent() -> None:
        model = FakeModel()
        model.add_tool_calls([("call_1", "add", {"a": 2, "b": 3})])
        model.add_text("2 + 3 = 5")
        runner = Runner("demo", LLMAgent("helper", model=model, tools=[add]))
        completion = await runner.run("alice", "s1", "2 + 3?").completion()
        assert completion.final_text == "2 + 3 = 5"
        assert model.requests[1]["messages"][-1]["role"] == "tool"

End-to-end tests, across processes and through the real ``openai`` client, use
:class:`ScriptedModelServer`, an OpenAI-compatible HTTP server (Celery worker subprocesses
point ``OPENAI_BASE_URL`` at ``server.url``)::

    from runner_core.testing import ScriptedModelServer, scripted_model

    def test_agent_over_http() -> None:
        with ScriptedModelServer() as server:
            server.add_text("hello")
            model = scripted_model(server)  # an OpenAIModel calling the server
            ...

Both take the same script (``add_text``, ``add_tool_calls``, ``add_error``, ``add_hang``,
``add_delay``, ``set_default``, ``reset``; replies first in, first out, one per model call),
record ``requests`` as the JSON bodies the endpoint receives, and give the agent loop the same
deltas, messages, usage and errors, so a test can switch between them.
"""

from .fake_model import FakeModel
from .script import ScriptedReply
from .server import ScriptedModelServer, scripted_model

__all__ = ["FakeModel", "ScriptedModelServer", "ScriptedReply", "scripted_model"]
