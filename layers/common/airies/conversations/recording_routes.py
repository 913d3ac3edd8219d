"""Recording playback: a short-lived presigned S3 GET for one side of one recorded turn (the web app's player).

The WAV files stay private in the storage bucket; the URL names exactly one of them and expires.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request

from airies.accounts.auth import Caller, current_caller
from airies.conversations.service import ConversationService
from airies.core.errors import NotFoundError

router = APIRouter(prefix="/conversations", tags=["conversations"])
URL_TTL_SECONDS = 300


def s3_client(request: Request) -> Any:
    """One client per app (tests may inject ``app.state.recordings_s3``)."""
    state = request.app.state
    client = getattr(state, "recordings_s3", None)
    if client is None:
        import boto3

        settings = state.settings
        client = state.recordings_s3 = boto3.client(
            "s3", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url
        )
    return client


@router.get("/{conversation_id}/turns/{turn_id}/recording/{side}")
def recording_url(
    conversation_id: str,
    turn_id: str,
    side: Literal["caller", "agent"],
    request: Request,
    caller: Caller = Depends(current_caller),
) -> dict[str, Any]:
    """A short-lived URL of one side's recording of a turn."""
    service = ConversationService(caller.session, request.app.state.settings)
    turns = service.get_conversation_history(caller.account_id, conversation_id)  # 404 for another account's
    turn = next((t for t in turns if t.id == turn_id), None)
    if turn is None:
        raise NotFoundError("turn", turn_id)
    stored = (turn.recording or {}).get(side)
    if not isinstance(stored, dict) or not stored.get("key"):
        raise NotFoundError("recording", f"{turn_id}/{side}")
    url = s3_client(request).generate_presigned_url(
        "get_object",
        Params={"Bucket": stored["bucket"], "Key": stored["key"], "ResponseContentType": "audio/wav"},
        ExpiresIn=URL_TTL_SECONDS,
    )
    return {"url": url, "expires_in": URL_TTL_SECONDS, "seconds": stored.get("seconds"), "content_type": "audio/wav"}
