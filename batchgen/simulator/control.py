"""Control routes, without auth, for tests and benchmarks that drive a simulator in another
process: GET /_sim/stats (``?logs=0`` leaves out the long logs), POST /_sim/credits
{"add": n}, POST /_sim/config {field: value, ...} (answers the whole config)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from .wire import Request, Response

if TYPE_CHECKING:
    from .app import Simulator


def control(sim: Simulator, req: Request) -> Response:
    if req.segments == ("_sim", "stats") and req.method == "GET":
        return Response.json(200, sim.stats(logs=parse_qs(req.query).get("logs", ["1"])[0] != "0"))
    if req.method != "POST" or req.segments not in (("_sim", "credits"), ("_sim", "config")):
        return Response.json(404, {"error": "not found"})
    try:
        payload = json.loads(req.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return Response.error(400, "body must be a JSON object")
    if req.segments[1] == "credits":
        add = payload.get("add")
        if not isinstance(add, int) or isinstance(add, bool):
            return Response.error(400, "add must be an integer")
        sim.add_credits(add)
        return Response.json(200, {"credits": sim.config.credits})
    try:
        sim.update_config(payload)
    except (TypeError, ValueError) as exc:
        return Response.error(400, str(exc))
    return Response.json(200, dataclasses.asdict(sim.config))
