"""Drives LangChain's ChatOpenAI on the Responses API against a base URL.

Usage: python langchain_calls.py BASE_URL
Sends one invoke and one stream (each with header `x-test-call`), prints
JSON: the text and usage metadata LangChain saw for each.
The credential is OPENAI_API_KEY from the environment.
"""

import json
import sys

from langchain_openai import ChatOpenAI


def main():
    base = sys.argv[1]
    out = {}
    for name in ("lc_invoke", "lc_stream"):
        llm = ChatOpenAI(
            model="gpt-5",
            use_responses_api=True,
            base_url=base,
            max_retries=0,
            default_headers={"x-test-call": name, "x-fake-usage": "input=100,output=20,cache_read=40"},
        )
        if name == "lc_invoke":
            msg = llm.invoke("Say hello.")
        else:
            msg = None
            for chunk in llm.stream("Say hello."):
                msg = chunk if msg is None else msg + chunk
        out[name] = {"text": msg.text if isinstance(msg.text, str) else msg.text(), "usage": msg.usage_metadata}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
