"""The real `openai` Python client against a real hearthd serving SmolLM2.

Run by scripts/test after `cargo build --release`; HEARTH_BIN_DIR points at the binaries.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import openai

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenAIClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        model_dir = pathlib.Path(os.environ.get("HEARTH_MODEL_DIR", pathlib.Path.home() / ".cache/hearth/models"))
        model = model_dir / MODEL_FILE
        if not model.is_file():
            raise unittest.SkipTest(f"{model} missing; run ../shared/scripts/fetch-models")
        bin_dir = pathlib.Path(os.environ.get("HEARTH_BIN_DIR", "target/release"))
        cls.data = tempfile.TemporaryDirectory()
        hearthd = str(bin_dir / "hearthd")
        # Provision as a script would: the owner, then an API token for the client.
        subprocess.run([hearthd, "admin", "create-owner", "--data-dir", cls.data.name, "--name", "owner",
                        "--password-stdin"], input="owner password\n", text=True, check=True)
        token = subprocess.run([hearthd, "admin", "create-token", "--data-dir", cls.data.name, "--user", "owner",
                                "--name", "openai-client"], capture_output=True, text=True, check=True).stdout.strip()
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.proc = subprocess.Popen(
            [str(bin_dir / "hearthd"), "--data-dir", cls.data.name, "--listen", f"127.0.0.1:{port}",
             "--model", str(model)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(cls.base + "/readyz", timeout=2) as r:
                    body = json.load(r)
                    if all(m["state"]["state"] != "loading" for m in body["inference"]["models"]):
                        break
            except Exception:
                pass
            if time.time() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("hearthd did not become ready")
            time.sleep(0.2)
        cls.client = openai.OpenAI(base_url=cls.base + "/v1", api_key=token, max_retries=0)
        cls.stranger = openai.OpenAI(base_url=cls.base + "/v1", api_key="hearth_wrong", max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(timeout=20)
        cls.data.cleanup()

    def test_models_list(self):
        ids = [m.id for m in self.client.models.list()]
        self.assertEqual(ids, [MODEL_ID])

    def test_plain_completion(self):
        res = self.client.chat.completions.create(
            model=MODEL_ID, temperature=0, max_tokens=24,
            messages=[{"role": "user", "content": "Give me three tips for sleeping better."}],
        )
        self.assertTrue(res.choices[0].message.content.startswith("Here are three tips"), res.choices[0].message.content)
        self.assertEqual(res.choices[0].message.role, "assistant")
        self.assertGreater(res.usage.prompt_tokens, 10)
        self.assertEqual(res.usage.total_tokens, res.usage.prompt_tokens + res.usage.completion_tokens)

    def test_streamed_completion_with_usage(self):
        stream = self.client.chat.completions.create(
            model=MODEL_ID, temperature=0, max_tokens=24, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Give me three tips for sleeping better."}],
        )
        pieces, usage, finish = [], None, None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage:
                usage = chunk.usage
        self.assertGreater(len(pieces), 3)
        self.assertTrue("".join(pieces).startswith("Here are three tips"), pieces)
        self.assertIn(finish, ("stop", "length"))
        self.assertIsNotNone(usage)
        self.assertGreaterEqual(usage.completion_tokens, len(pieces))

    def test_a_wrong_token_is_refused(self):
        with self.assertRaises(openai.AuthenticationError) as e:
            self.stranger.models.list()
        self.assertEqual(e.exception.code, "unauthenticated")

    def test_errors_are_typed(self):
        with self.assertRaises(openai.NotFoundError) as e:
            self.client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(e.exception.code, "model_not_found")
        with self.assertRaises(openai.BadRequestError):
            self.client.chat.completions.create(
                model=MODEL_ID, max_tokens=-1, messages=[{"role": "user", "content": "hi"}])
        with self.assertRaises(openai.BadRequestError):
            self.client.chat.completions.create(model=MODEL_ID, messages=[])


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() and not result.skipped else 1)
