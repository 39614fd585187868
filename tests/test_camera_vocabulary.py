import pytest

from dimo import camera_vocabulary as cv


def test_the_papers_21_camera_motions():
    vocab = cv.vocabulary()
    assert len(vocab) == 21
    labels = {m.label for m in vocab.values()}
    assert {"Static", "Handheld Static", "Move Forward", "Move Back", "Move Left", "Move Right", "Move Up",
            "Move Down", "Zoom In", "Zoom Out", "Rapid Zoom In", "Rapid Zoom Out", "Handheld Zoom In",
            "Aerial Pull-out", "Vertigo In", "Vertigo Out", "Dynamic Zoom Swing", "Arc Left", "Arc Right"} == labels
    assert {m.params.get("angle") for m in vocab.values() if m.label.startswith("Arc")} == {30, 45}


def test_prompt_template_fills_subject_action_and_angle():
    text = cv.prompt("arc_right_45", subject="A tall woman", action="dances")
    assert text == "A tall woman dances. The camera arcs 45 degrees to the right around the subject."
    assert cv.get("arc_left_30").describe(angle=60).startswith("The camera arcs 60 degrees to the left")
    assert "static" in cv.prompt("static").lower()


@pytest.mark.parametrize("label,key", [("Static", "static"), ("handheld-static", "handheld_static"),
                                       ("Aerial Pull-out", "aerial_pull_out"), ("Arc Left 30", "arc_left_30"),
                                       ("arc right 45°", "arc_right_45"), ("zoom_in", "zoom_in")])
def test_labels_normalise_to_keys(label, key):
    assert cv.normalise_label(label) == key


def test_unknown_labels_are_refused():
    with pytest.raises(KeyError, match="unknown camera motion"):
        cv.normalise_label("barrel roll")
    with pytest.raises(KeyError, match="barrel"):
        cv.get("barrel")
