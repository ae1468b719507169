"""Verified outputs, end to end: after the mux the file is held to the request (`verify`), and
every uploaded object's SHA-256 is recorded, as the S3 server (moto on loopback) stored it.

Media is made by FFmpeg at test time and served over loopback: a clip cut mid-stream (its index
says 10 s, its data stops near 3.5 s), a clip with garbage in the middle of its data, and a
clip offered only at 480p.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.fixtures.cluster import Cluster
from tests.fixtures.media import MediaServer, make_clip, make_corrupt, make_cut_short


def _cut_short(media_dir: Path) -> str:
    if not (media_dir / "cut-short.mp4").exists():
        make_cut_short(media_dir / "cut-short.mp4", 10.0)
    return "cut-short.mp4"


def _object_sha256(cluster: Cluster, key: str) -> str:
    body = cluster.s3.client().get_object(Bucket=cluster.bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


async def test_a_source_cut_mid_stream_fails_verification_naming_both_lengths(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    job_id = await cluster.create(media_server.url(_cut_short(media_dir)))

    failed = await cluster.wait(job_id, "Failed", "Completed", seconds=60)

    assert failed["status"] == "Failed", failed
    assert failed["error"].startswith("Verification failed: the output lasts "), failed["error"]
    assert failed["error"].endswith(", the source 10.0 s")
    assert failed["error_type"] == "error"
    assert failed["mux_retries"] == 1  # the same file verifies the same: no pointless retries
    assert cluster.objects() == []  # nothing that failed verification reaches storage


async def test_verify_off_skips_verification_and_delivers_what_the_mux_made(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    job_id = await cluster.create(media_server.url(_cut_short(media_dir)), verify="off")

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

    assert done["status"] == "Completed", done
    assert done["verified"] is None
    assert done["duration_seconds"] < 5.0  # the short file, as asked: unverified


async def test_a_source_offered_only_at_480p_for_1080p_completes_with_a_warning(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    make_clip(media_dir / "sd-480.mp4", 1.0, width=854, height=480)
    job_id = await cluster.create(media_server.url("sd-480.mp4"), max_resolution="1080")

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

    assert done["status"] == "Completed", done
    assert done["error_type"] == "warning"
    assert done["error"] == (
        "480p delivered, below the 1080p asked for: the source offers no more than 480p"
    )
    assert (done["requested_quality"], done["actual_quality"]) == ("1080", "480p")
    assert done["verified"] == "fast"
    assert done["s3_url"]


async def test_full_verification_decodes_the_output_and_fails_on_damage_fast_cannot_see(
    cluster: Cluster, media_server: MediaServer, media_dir: Path
) -> None:
    make_corrupt(media_dir / "damaged.mp4", 4.0)

    fast = await cluster.create(media_server.url("damaged.mp4"))
    full = await cluster.create(media_server.url("damaged.mp4"), verify="full")

    probed = await cluster.wait(fast, "Completed", "Failed", seconds=60)
    decoded = await cluster.wait(full, "Completed", "Failed", seconds=60)
    assert (probed["status"], probed["verified"]) == ("Completed", "fast"), probed
    assert decoded["status"] == "Failed", decoded
    assert decoded["error"].startswith("Verification failed: the output does not decode: ")
    assert "damaged" not in decoded["error"] and "output." not in decoded["error"]


async def test_the_recorded_sha256_is_that_of_the_object_read_back_from_s3(
    cluster: Cluster, media_server: MediaServer
) -> None:
    job_id = await cluster.create(
        media_server.url("clip.mp4"), filename="summed", verify="full", download_thumbnail=True
    )

    done = await cluster.wait(job_id, "Completed", "Failed", seconds=60)

    assert done["status"] == "Completed", done
    assert (done["verified"], done["error"], done["error_type"]) == ("full", None, None)
    media = cluster.in_bucket("summed.mp4")
    assert done["sha256"] == _object_sha256(cluster, media)
    assert [o["key"] for o in done["objects"]] == [
        cluster.key_of("summed.mp4"),
        cluster.key_of("summed.jpg"),
    ]
    for listed in done["objects"]:
        assert listed["sha256"] == _object_sha256(cluster, f"media/{listed['key']}")
        assert listed["sha256_checked"] is True  # S3 answered the same SHA-256
    answer = await cluster.client.get(f"/jobs/{job_id}/events", headers=cluster.headers())
    completed = next(e for e in answer.json()["events"] if e["type"] == "JobCompleted")
    assert completed["data"]["objects"][0]["sha256"] == done["sha256"]
