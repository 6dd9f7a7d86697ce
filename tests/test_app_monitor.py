"""The Monitor tab of the page, served on 127.0.0.1 with the tiny model: the
/monitor_video API equals the detector on the same decoded frames, bad videos get a message while /status keeps
answering, re-classification makes no model call, and the camera path scores the newest frame."""
import numpy as np
import pytest
from PIL import Image

from served_app import served_tiny
from test_monitor import line_frames, write_video

@pytest.fixture(scope="module")
def served(tiny_files):
    with served_tiny(tiny_files, precision="fp32") as (service, demo, url):
        assert ("Monitor", [demo.mrad.monitor]) in demo.mrad.tabs  # mounted on the page every user gets
        yield service, url, demo.mrad


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client
    return Client(served[1], verbose=False)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "line.avi", line_frames()[:10])


def test_monitor_video_api_scores_like_the_detector(client, video, tiny_detector):
    from gradio_client import handle_file

    from mrad_core.video import open_source
    out = client.predict(video=handle_file(str(video)), profile=None, fps=0, variants=["tf", "clip"],
                         api_name="/monitor_video")
    assert out["scored_frames"] == 10 and out["dropped_frames"] == 0 and set(out) >= {"anomalies", "drift", "frames"}
    frames = list(open_source(video))
    for f, rec in zip(frames, out["frames"], strict=True):
        assert rec["frame"] == f.index and set(rec["variants"]) == {"tf", "clip"}
        expected = tiny_detector.predict([f.image], ("tf", "clip"))
        for v, x in rec["variants"].items():
            assert abs(x["score"] - float(expected[v].score[0])) <= 1e-5
            assert x["anomalous"] == (x["score"] >= 0.5)
    # every 2nd frame at 2.5 frames/s of a 5 frames/s video
    sampled = client.predict(video=handle_file(str(video)), profile=None, fps=2.5, variants=["tf"],
                             api_name="/monitor_video")
    assert [r["frame"] for r in sampled["frames"]] == [0, 2, 4, 6, 8]


def test_bad_video_gets_a_message_and_the_server_keeps_serving(client, video, tmp_path):
    from gradio_client import handle_file
    data = video.read_bytes()
    broken = tmp_path / "cut.avi"
    broken.write_bytes(data[:len(data) * 6 // 10])
    with pytest.raises(Exception, match="truncated or corrupt"):
        client.predict(video=handle_file(str(broken)), profile=None, fps=0, variants=["tf"], api_name="/monitor_video")
    audio = tmp_path / "song.wav"
    import wave
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 800)
    with pytest.raises(Exception, match="audio-only"):
        client.predict(video=handle_file(str(audio)), profile=None, fps=0, variants=["tf"], api_name="/monitor_video")
    assert "device CPU" in client.predict(api_name="/status")


def test_threshold_reclassifies_without_scoring(served, video, monkeypatch):
    _, _, page = served
    tab = page.monitor
    state = tab.scored(str(video), None, 0, ["tf"])
    first = tab.outputs(state, tab.monitor_of(state, 0.5, None, 4))

    def no_model(*a, **k):
        raise AssertionError("re-classification called the model")

    monkeypatch.setattr(page, "gpu_chunk", no_model)
    scores = [m["variants"]["tf"]["score"] for m in state["measures"]]
    cut = float(np.median(scores))
    again = tab.reclassify(first[tab.scores], cut, None, 4)
    recs = again[tab.scores]["records"]
    assert [r["variants"]["tf"]["score"] for r in recs] == scores
    assert [r["variants"]["tf"]["anomalous"] for r in recs] == [s >= cut for s in scores]
    with open(again[tab.csv]) as f:
        assert f.readline().strip() == ("frame,t_s,variant,score,anomalous,map_top,defect_area_percent,latency_ms,"
                                        "ewma,lower,upper,state")
    shown = tab.show_frame(again[tab.scores], 3)
    assert "frame 3" in shown[tab.frame_text] and shown[tab.frame_view].endswith("frame_000003.jpg")
    import gradio as gr  # before any scoring, the controls change nothing (no update, not an empty dict: Gradio
    skip = type(gr.skip())  # counts an empty dict as too few outputs and shows Error badges)
    assert isinstance(tab.reclassify(None, 0.3, None, 4), skip) and isinstance(tab.show_frame(None, 0), skip)


def test_camera_scores_the_newest_frame(served):
    _, _, page = served
    tab = page.monitor
    frame = np.asarray(Image.fromarray(line_frames()[0]))
    out = tab.camera_frame(frame, None, ["tf"], None, None, 0.5)
    live = out[tab.live]
    assert live.stream.wait_scored(1, timeout=120)
    out = tab.camera_frame(frame, live, ["tf"], None, None, 0.5)
    assert out[tab.live] is live and "MRAD-TF" in out[tab.live_text] and "1 frames scored" in out[tab.live_text]
    assert out[tab.live_view].shape[2] == 3 and len(out[tab.live_plot]) >= 1
    assert live.stream.wait_scored(2, timeout=120) and live.monitor.scored_frames == 2
    live.close()


def test_camera_on_zerogpu_says_it_needs_a_dedicated_gpu(served, monkeypatch):
    import dataclasses

    import gradio as gr
    _, _, page = served
    monkeypatch.setattr(page, "settings", dataclasses.replace(page.settings, zero_gpu=True))
    with pytest.raises(gr.Error, match="needs a dedicated GPU"):
        page.monitor.camera_frame(np.zeros((64, 64, 3), np.uint8))


def test_a_failure_while_scoring_leaves_no_work_folder(served, video, monkeypatch):
    from mrad_core.errors import MRADError
    service, _, page = served
    before = set(service.workdir.iterdir())

    def broken(*a, **k):
        raise MRADError("the GPU call failed")

    monkeypatch.setattr(page, "gpu_chunk", broken)
    with pytest.raises(MRADError, match="the GPU call failed"):
        page.monitor.scored(str(video), None, 0, ["tf"])
    assert set(service.workdir.iterdir()) == before
