"""A local server speaking the Azure Speech text-to-speech REST API.

``POST /cognitiveservices/v1`` with ``Ocp-Apim-Subscription-Key``, ``Content-Type: application/ssml+xml``
and ``X-Microsoft-OutputFormat`` (raw-16khz-16bit-mono-pcm, raw-8khz-8bit-mono-mulaw, riff-*, *-mp3);
``GET /cognitiveservices/voices/list``. Azure answers errors with an empty or plain body: 400 (bad SSML,
unknown voice), 401, 415, 429.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from xml.etree import ElementTree

from tests.doubles._wire import RecordedRequest, Reply, WireDouble, chunks, fake_mp3, speak_pcm16

VOICES = [
    ("en-US-JennyNeural", "Jenny", "Female", "en-US"),
    ("en-US-GuyNeural", "Guy", "Male", "en-US"),
    ("en-US-AriaNeural", "Aria", "Female", "en-US"),
    ("en-GB-SoniaNeural", "Sonia", "Female", "en-GB"),
]
RAW = re.compile(r"^(raw|riff)-(\d+)(khz|hz)-(8|16)bit-mono-(pcm|mulaw)$")


class AzureTTSServer(WireDouble):
    default_latency = 0.10

    def check_auth(self, request: RecordedRequest) -> bool:
        return request.headers.get("ocp-apim-subscription-key") == self.api_key

    def unauthorized(self) -> Reply:
        return Reply(401, "", {"content-type": "text/plain"})

    def default_error_body(self, status: int) -> Any:
        return ""

    def handle(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        if request.path == "/cognitiveservices/voices/list" and request.method == "GET":
            return (
                200,
                {},
                [
                    {
                        "Name": f"Microsoft Server Speech Text to Speech Voice ({locale}, {short})",
                        "DisplayName": name,
                        "LocalName": name,
                        "ShortName": short,
                        "Gender": gender,
                        "Locale": locale,
                        "SampleRateHertz": "24000",
                        "VoiceType": "Neural",
                        "Status": "GA",
                    }
                    for short, name, gender, locale in VOICES
                ],
            )
        if request.path != "/cognitiveservices/v1" or request.method != "POST":
            raise Reply(404, "")
        if not request.headers.get("content-type", "").startswith("application/ssml+xml"):
            raise Reply(415, "Unsupported Media Type")
        output = request.headers.get("x-microsoft-outputformat", "")
        try:
            root = ElementTree.fromstring(request.body)
        except ElementTree.ParseError as exc:
            raise Reply(400, f"SSML parse error: {exc}") from exc
        voice = root.find("{http://www.w3.org/2001/10/synthesis}voice") or root.find("voice")
        if voice is None:
            raise Reply(400, "SSML must contain a voice element")
        if voice.get("name") not in {v[0] for v in VOICES}:
            raise Reply(400, f"Unsupported voice {voice.get('name')}.")
        text = "".join(voice.itertext()).strip()
        if not text:
            raise Reply(400, "SSML contains no text")
        headers = {"x-requestid": uuid.uuid4().hex}
        if output.endswith("-mp3"):
            return (
                200,
                {**headers, "content-type": "audio/mpeg"},
                iter(chunks(fake_mp3(0.06 * len(text.split()) + 0.3), 2048)),
            )
        match = RAW.match(output)
        if not match:
            raise Reply(400, f"Unsupported output format {output!r}")
        from airies.voice.audio.codecs import pcm16_to_ulaw, write_wav

        rate = int(match.group(2)) * (1000 if match.group(3) == "khz" else 1)
        pcm = speak_pcm16(text, rate)
        audio = pcm16_to_ulaw(pcm) if match.group(5) == "mulaw" else pcm
        if match.group(1) == "riff":
            audio = write_wav(audio, rate)
        return (
            200,
            {**headers, "content-type": "audio/x-wav" if match.group(1) == "riff" else "audio/pcm"},
            iter(chunks(audio, 3200)),
        )
