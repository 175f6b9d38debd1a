"""The inference server over real HTTP, started as Weaviate would run it."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from .fixture_data import INPUTS, embed_with_cli
from .server_process import ServerProcess, http_status
from .wire import RESPONSE_KEYS, WIRE, b64, post


@pytest.fixture(scope="module")
def server():
    with ServerProcess() as running:
        yield running


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("key", list(WIRE))
def test_each_modality_alone_matches_the_reference(server, wire_items, expected, key):
    status, body, _ = post(server.url, {key: wire_items[key]})
    assert status == 200, body
    assert sorted(body) == sorted(RESPONSE_KEYS)
    modality, response_key = WIRE[key]
    for other in RESPONSE_KEYS:
        assert body[other] == [] or other == response_key
    vectors = np.array(body[response_key], dtype=np.float32)
    assert vectors.shape == expected[modality].shape
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * unit(expected[modality])).sum(1)
    assert cosine.min() >= (0.999 if modality == "video" else 0.99999)


def test_all_modalities_together_in_input_order(server, wire_items):
    status, together, _ = post(server.url, wire_items)
    assert status == 200, together
    for key, (_, response_key) in WIRE.items():
        alone = post(server.url, {key: wire_items[key]})[1][response_key]
        assert len(together[response_key]) == len(wire_items[key])
        np.testing.assert_allclose(together[response_key], alone, atol=1e-5)
    reversed_images = post(server.url, {"images": wire_items["images"][::-1]})[1]["imageVectors"]
    np.testing.assert_allclose(reversed_images[::-1], together["imageVectors"], atol=1e-5)


def test_vectors_equal_ib_vectorizer_embed(server, tmp_path, wire_items):
    files = [str(INPUTS / name) for name in ["tone_16k_mono.wav", "chirp_44k_stereo.wav"]]
    on_host = embed_with_cli("audio", files, tmp_path / "audio.npy")
    body = post(
        server.url,
        {"audio": [b64(INPUTS / "tone_16k_mono.wav"), b64(INPUTS / "chirp_44k_stereo.wav")]},
    )[1]
    np.testing.assert_allclose(body["audioVectors"], on_host, atol=1e-5)


def test_empty_lists_and_empty_object_are_fine(server):
    for payload in ({}, {"texts": [], "images": []}):
        status, body, _ = post(server.url, payload)
        assert status == 200 and body == {key: [] for key in RESPONSE_KEYS}


def test_body_as_weaviates_go_client_sends_it(server, wire_items):
    # Go's encoding/json: struct field order, omitempty, no spaces, and HTML-escaped <, >, &.
    image = wire_items["images"][0]
    body = (
        f'{{"texts":["a \\u003cb\\u003edog\\u003c/b\\u003e \\u0026 a cat"],"images":["{image}"]}}'
    ).encode()
    status, answer, headers = post(server.url, body)
    assert status == 200, answer
    assert headers["Content-Type"].startswith("application/json")
    assert len(answer["textVectors"]) == 1 and len(answer["imageVectors"]) == 1
    same_text = post(server.url, {"texts": ["a <b>dog</b> & a cat"]})[1]["textVectors"]
    np.testing.assert_allclose(answer["textVectors"], same_text, atol=1e-6)
    assert all(isinstance(v, float) for v in answer["imageVectors"][0])


def test_64_concurrent_mixed_requests_each_get_their_own_answer(server, wire_items):
    singles = [{key: [value]} for key, values in wire_items.items() for value in values]
    requests = [singles[i % len(singles)] for i in range(64)]
    alone = [post(server.url, payload)[1] for payload in singles]
    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(lambda payload: post(server.url, payload), requests))
    for i, (status, body, _) in enumerate(answers):
        assert status == 200, body
        expected_body = alone[i % len(singles)]
        for key in RESPONSE_KEYS:
            np.testing.assert_allclose(body[key], expected_body[key], atol=1e-5)


def test_a_bad_item_fails_only_its_own_request(server, wire_items):
    good = {"images": wire_items["images"][:1]}
    bad = {"images": [wire_items["images"][0], base64.b64encode(b"not an image").decode()]}
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda p: post(server.url, p), [good] * 15 + [bad]))
    assert [status for status, _, _ in answers] == [200] * 15 + [400]
    assert answers[-1][1]["error"].startswith("images[1]: not a decodable image file")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
        ({"images": "abc"}, "'images' must be a list of strings"),
        ({"texts": ["ok", 3]}, "texts[1]: must be a string, not int"),
        ({"image": ["abc"]}, "unknown field(s) 'image'"),
        ({"images": ["***not base64***"]}, "images[0]: not valid base64"),
        ({"audio": [base64.b64encode(b"RIFF....WAVEjunk").decode()]}, "audio[0]: "),
        ({"video": ["", base64.b64encode(b"\x00" * 64).decode()]}, "video[0]: video file is empty"),
        (
            {"imu": [base64.b64encode(b"a,b,c,d,e\n1,2,3,4,5\n").decode()]},
            "imu[0]: IMU CSV data row 1 has 5 columns",
        ),
        ({"depth": [base64.b64encode(b"GIF89a").decode()]}, "depth[0]: not a decodable"),
        ({"thermal": [base64.b64encode(b"").decode()]}, "thermal[0]: thermal image file is empty"),
    ],
)
def test_bad_requests_are_400_with_a_json_error(server, payload, message):
    status, body, _ = post(server.url, payload)
    assert status == 400
    assert list(body) == ["error"] and message in body["error"]


def test_unknown_route_and_method_are_json_errors(server):
    request = urllib.request.Request(server.url + "/nope")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 404 and "error" in json.loads(info.value.read())
    request = urllib.request.Request(server.url + "/vectorize", method="GET")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 405 and "error" in json.loads(info.value.read())


def test_well_known_meta_and_metrics(server, wire_items):
    assert http_status(server.url + "/.well-known/live") == 204
    assert http_status(server.url + "/.well-known/ready") == 204
    assert http_status(server.url + "/.well-known/ready", method="HEAD") == 204
    with urllib.request.urlopen(server.url + "/meta", timeout=5) as response:
        meta = json.loads(response.read())
    assert meta["embeddingDim"] == 32 and meta["dtype"] == "float32" and meta["normalized"]
    assert meta["devices"] == ["cpu"] and "audio" in meta["modalities"] and meta["version"]
    assert meta["imageDecode"] == "exact"
    post(server.url, {"audio": wire_items["audio"][:1]})
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    for name in [
        'ib_queue_depth{modality="audio"}',
        "ib_batch_views_bucket",
        "ib_queue_wait_seconds_bucket",
        "ib_compute_seconds_bucket",
        'ib_items_embedded_total{modality="audio"}',
        "ib_errors_total",
    ]:
        assert name in text, name


def test_limits_burst_and_recovery(wire_items):
    video = wire_items["video"][0]
    with ServerProcess(IB_MAX_QUEUE="2", IB_MAX_ITEMS="3", IB_MAX_BODY_MB="0.05") as server:
        # 3 items fit IB_MAX_ITEMS but could never be admitted under IB_MAX_QUEUE=2: 413.
        status, body, _ = post(server.url, {"texts": ["a", "b", "c"]})
        assert status == 413 and "limit is 2 (IB_MAX_ITEMS, IB_MAX_QUEUE)" in body["error"]
        status, body, _ = post(server.url, {"texts": ["x" * 60_000]})
        assert status == 413 and "IB_MAX_BODY_MB" in body["error"]
        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(lambda _: post(server.url, {"video": [video]}), range(24)))
        statuses = [status for status, _, _ in answers]
        assert statuses.count(503) > 0 and statuses.count(200) > 0
        overloaded = next(a for a in answers if a[0] == 503)
        assert overloaded[2]["Retry-After"] == "1" and "capacity" in overloaded[1]["error"]
        assert post(server.url, {"video": [video]})[0] == 200  # still serving


def test_request_past_its_deadline_gets_504(wire_items):
    with ServerProcess(IB_REQUEST_TIMEOUT_S="0.001") as server:
        status, body, _ = post(server.url, {"video": wire_items["video"][:1]})
    assert status == 504 and "IB_REQUEST_TIMEOUT_S" in body["error"]


def test_api_key_guards_everything_but_well_known(wire_items):
    with ServerProcess(IB_API_KEY="s3cret") as server:
        assert post(server.url, {"texts": ["hi"]})[0] == 401
        assert post(server.url, {"texts": ["hi"]}, {"Authorization": "Bearer s3cret"})[0] == 200
        assert http_status(server.url + "/.well-known/ready") == 204


def test_fast_image_decode_from_the_environment_changes_only_large_photos(server):
    from .test_preprocess_image import photo_jpeg

    large = base64.b64encode(photo_jpeg(4000, 3000)).decode()
    small = base64.b64encode(photo_jpeg(640, 480)).decode()
    exact = post(server.url, {"images": [large, small]})[1]["imageVectors"]
    with ServerProcess(IB_IMAGE_DECODE="fast") as fast_server:
        with urllib.request.urlopen(fast_server.url + "/meta", timeout=5) as response:
            assert json.loads(response.read())["imageDecode"] == "fast"
        fast = post(fast_server.url, {"images": [large, small]})[1]["imageVectors"]
    assert not np.allclose(fast[0], exact[0], atol=1e-7)
    assert np.dot(fast[0], exact[0]) > 0.99
    np.testing.assert_allclose(fast[1], exact[1], atol=1e-6)


def test_int8_from_the_environment_shows_in_meta_and_stays_close(server, wire_items):
    media = {"texts": ["a dog on a beach"], "images": wire_items["images"][:2]}
    float32 = post(server.url, media)[1]
    with ServerProcess(IB_QUANTIZE="int8") as int8_server:
        with urllib.request.urlopen(int8_server.url + "/meta", timeout=5) as response:
            assert json.loads(response.read())["quantize"] == "int8"
        status, int8, _ = post(int8_server.url, media)
    assert status == 200
    for key in ("textVectors", "imageVectors"):
        cosines = [np.dot(a, b) for a, b in zip(int8[key], float32[key], strict=True)]
        assert min(cosines) > 0.998, key
        assert not np.allclose(int8[key], float32[key], atol=1e-7), key


def test_decoding_processes_give_the_same_vectors_and_the_same_errors(server, wire_items):
    media = {"audio": wire_items["audio"], "video": wire_items["video"][:2]}
    threads = post(server.url, media)[1]
    bad = {"audio": [wire_items["audio"][0], base64.b64encode(b"RIFF....WAVEjunk").decode()]}
    with ServerProcess(IB_DECODE_PROCESSES="2") as decoding:
        status, processes, _ = post(decoding.url, media)
        assert status == 200
        bad_status, bad_body, _ = post(decoding.url, bad)
        again = post(decoding.url, {"audio": wire_items["audio"][:1]})[0]
    for key in ("audioVectors", "videoVectors"):
        np.testing.assert_allclose(processes[key], threads[key], atol=1e-6)
    assert bad_status == 400 and bad_body["error"].startswith("audio[1]: ")
    assert again == 200  # a bad item did not break the decoding processes


def test_two_replicas_share_the_queues(wire_items):
    with ServerProcess(IB_DEVICES="cpu,cpu") as server:
        with urllib.request.urlopen(server.url + "/meta", timeout=5) as response:
            assert json.loads(response.read())["devices"] == ["cpu", "cpu"]
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(
                pool.map(lambda _: post(server.url, {"audio": wire_items["audio"]}), range(16))
            )
        first = answers[0][1]["audioVectors"]
        for status, body, _ in answers:
            assert status == 200
            np.testing.assert_allclose(body["audioVectors"], first, atol=1e-5)


def test_sigterm_turns_ready_503_finishes_in_flight_then_exits(wire_items):
    # A batch waits up to 1.5 s for company, so the request is still in flight at SIGTERM.
    with ServerProcess(IB_MAX_WAIT_MS="1500", IB_MAX_BATCH="1000") as server:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(post, server.url, {"images": wire_items["images"][:1]})
            time.sleep(0.5)
            server.process.send_signal(15)
            time.sleep(0.2)
            assert http_status(server.url + "/.well-known/ready") == 503
            assert post(server.url, {"texts": ["late"]})[0] == 503
            status, body, _ = pending.result(timeout=30)
        assert status == 200 and len(body["imageVectors"]) == 1
        assert server.process.wait(timeout=30) == 0
        assert "finishing 1 request(s) in flight" in server.log()


def test_missing_checkpoint_fails_loudly(tmp_path):
    with ServerProcess(wait_ready=False, IB_CHECKPOINT=str(tmp_path / "absent.pth")) as server:
        assert server.process.wait(timeout=60) == 1
        assert "ib-vectorizer download" in server.log()
