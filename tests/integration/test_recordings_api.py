"""Recording playback URLs: one side of one recorded turn, presigned, tenant-scoped; both databases, moto S3."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import boto3
import pytest
from moto import mock_aws

from airies.voice.audio.codecs import read_wav
from tests.conftest import signup
from tests.doubles.conv_engines import tone
from tests.integration.test_conv_api import deployed_agent, engines, live_sessions, start  # noqa: F401

pytestmark = pytest.mark.db


def test_recorded_turn_sides_play_from_a_presigned_url_of_the_owner_only(client, auth, engines, settings) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    with mock_aws():
        s3 = boto3.client("s3", region_name=settings.aws_region)
        s3.create_bucket(Bucket=settings.storage_bucket)
        client.app.state.recordings_s3 = s3
        cid = start(client, auth, deployed_agent(client, auth, recording_enabled=True))["id"]
        turn = client.post(
            f"/api/v1/conversations/{cid}/audio", content=tone(400), headers={**auth, "content-type": "audio/l16"}
        ).json()["turn"]
        url = f"/api/v1/conversations/{cid}/turns/{turn['id']}/recording"

        caller_side = client.get(f"{url}/caller", headers=auth)
        assert caller_side.status_code == 200, caller_side.text
        link = caller_side.json()
        assert link["expires_in"] == 300 and link["content_type"] == "audio/wav"
        parsed = urlsplit(link["url"])
        assert "Signature=" in parsed.query and "Expires" in parsed.query
        key = unquote(parsed.path).removeprefix(f"/{settings.storage_bucket}").lstrip("/")
        assert key == turn["recording"]["caller"]["key"]
        body = s3.get_object(Bucket=settings.storage_bucket, Key=key)["Body"].read()
        assert read_wav(body) == (tone(400), 16000)
        assert client.get(f"{url}/agent", headers=auth).status_code == 200

        other = signup(client)
        assert client.get(f"{url}/caller", headers=other).status_code == 404
        assert client.get(f"{url}/speaker", headers=auth).status_code == 422
        assert (
            client.get(f"/api/v1/conversations/{cid}/turns/turn_missing/recording/caller", headers=auth).status_code
            == 404
        )


def test_a_turn_without_recording_has_no_url(client, auth, engines) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    cid = start(client, auth, deployed_agent(client, auth))["id"]
    turn = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "Hi"}, headers=auth).json()["turn"]
    response = client.get(f"/api/v1/conversations/{cid}/turns/{turn['id']}/recording/agent", headers=auth)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
