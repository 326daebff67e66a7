"""A wasi:http handler in Python, made a component by componentize-py (from PyPI) as
its users make one: the serve tests and benchmark build it. It counts the requests its
instance has served, reads the body, and answers with what it saw as JSON; `/exit`
exits instead of answering."""

import json
import os
import sys

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import Fields, OutgoingBody, OutgoingResponse, ResponseOutparam

SERVED = 0


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        global SERVED
        SERVED += 1
        incoming = request.consume()
        stream = incoming.stream()
        body = b""
        while True:
            try:
                body += stream.blocking_read(65536)
            except Err as error:
                if isinstance(error.value, StreamError_Closed):
                    break
                raise
        stream.__exit__(None, None, None)
        incoming.__exit__(None, None, None)
        path = request.path_with_query()
        if path == "/exit":
            sys.exit(3)
        try:
            with open("/etc/hostname"):
                opened = "opened"
        except OSError as error:
            opened = type(error).__name__
        headers = {name: value.decode() for name, value in request.headers().entries()}
        answer = {
            "path": path,
            "served": SERVED,
            "bytes": len(body),
            "name": headers.get("x-name"),
            "greeting": os.environ.get("GREETING"),
            "environment": sorted(os.environ),
            "args": sys.argv,
            "file": opened,
        }
        response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
        out = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with out.write() as writer:
            writer.blocking_write_and_flush(json.dumps(answer).encode())
        OutgoingBody.finish(out, None)
