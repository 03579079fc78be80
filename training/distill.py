"""Teacher labels for distilling a served model into the paper-sized CNN.

The shipped tagger (``model/genre_cnn.onnx``) is accurate but costs ~70 ms per window; the
paper CNN costs ~0.3 ms. Distillation trains the small model to reproduce the teacher's genre
probabilities on the *same audio*, including every waveform variant of every training clip,
which gives the student many more informative targets than the one hard label per clip
(function matching: Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and
consistent").

Teacher and student may use different front ends (the tagger: 16 kHz, 96 mels, 3.008 s
windows; the paper CNN: 22.05 kHz, 128 mels, 3.04 s windows), so a student window is labelled
by the teacher window that starts at the same instant of the same audio. Both start on their
own frame grids, so they are at most half a teacher hop (8 ms for the tagger) apart.

Pure functions and onnxruntime only: no torch here (``training.train`` does the fitting).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamgenre.model.contract import GenreModel
from streamgenre.model.features import FeatureRecipe
from training.data import window_starts, windows_from_frames


def aligned_teacher_starts(
    student_starts: Sequence[int], student: FeatureRecipe, teacher: FeatureRecipe
) -> np.ndarray:
    """Teacher frame index starting at the same instant as each student window start frame."""
    seconds = student.frames_to_seconds(np.asarray(student_starts, np.float64))
    return np.rint(seconds * teacher.sample_rate / teacher.hop_length).astype(int)


def teacher_targets(
    teacher: GenreModel,
    teacher_frames: np.ndarray,
    n_student_frames: int,
    student: FeatureRecipe,
    hop_frames: int,
    labels: Sequence[str],
) -> np.ndarray:
    """Teacher probabilities for the student windows of one clip version.

    Parameters
    ----------
    teacher : GenreModel
        The model to distil; its labels must include every one of ``labels``.
    teacher_frames : np.ndarray, shape (teacher n_mels, T_teacher)
        Compressed log-mel frames of the audio in the teacher's recipe.
    n_student_frames : int
        Frames of the same audio in the student's recipe.
    student : FeatureRecipe
    hop_frames : int
        Student hop between windows, in frames.
    labels : sequence of str
        Student class order; teacher columns are reordered to it and renormalised.

    Returns
    -------
    np.ndarray, shape (n, len(labels)), float32
        Row ``j`` labels the student window starting at frame ``j * hop_frames``. ``n`` is the
        number of such windows whose teacher window also fits inside the audio (at the end of
        a clip the two front ends' windows may end a few milliseconds apart).
    """
    missing = set(labels) - set(teacher.labels)
    if missing:
        raise ValueError(f"teacher {teacher.path} has no output for {sorted(missing)}")
    recipe = teacher.recipe
    starts = list(window_starts(n_student_frames, student.n_frames, hop_frames))
    teacher_starts = aligned_teacher_starts(starts, student, recipe)
    fits = teacher_starts + recipe.n_frames <= teacher_frames.shape[1]
    usable = int(np.argmin(fits)) if not fits.all() else len(starts)
    probs, _ = teacher.predict(windows_from_frames(teacher_frames, recipe, teacher_starts[:usable]), batch_size=64)
    columns = [teacher.labels.index(label) for label in labels]
    chosen = probs[:, columns]
    return (chosen / np.maximum(chosen.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)
