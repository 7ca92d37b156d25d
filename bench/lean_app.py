"""The reference a webhook is measured against: the leanest honest FastAPI route that takes a
DLR. It reads the raw body, validates it with one pydantic ``validate_json`` against a DLR
model (the id a UUID, as Wavy's are), and answers a body encoded once at import. No database,
no authentication, no logging, no middleware of ours. bench.lean serves it with the same
uvicorn options as the service and loads both in the same run; the performance issue's own
copy of this route, where it stands beside the repository, is preferred."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, TypeAdapter


class LeanDlr(BaseModel):
    id: uuid.UUID
    correlationId: str | None = None
    carrierId: int | None = None
    carrierName: str | None = None
    destination: str | None = None
    sentStatusCode: int | None = None
    sentStatus: str | None = None
    sentStatusAt: int | None = None
    sentStatusDate: str | None = None
    deliveredStatusCode: int | None = None
    deliveredStatus: str | None = None
    deliveredAt: int | None = None
    deliveredDate: str | None = None
    campaignId: int | str | None = None


VALIDATE = TypeAdapter(LeanDlr)
ANSWER = b'{"received":1,"duplicates":0}'
app = FastAPI()


@app.post("/dlr")
async def receive(request: Request) -> Response:
    VALIDATE.validate_json(await request.body())
    return Response(ANSWER, media_type="application/json")
