"""Which recordings under ``shared/data/audio`` are for training and which for testing.

Speakers and noises used for testing never appear in training. Test speech is the
LibriSpeech test-other speakers (disjoint from train-clean-100) and the three librosa
clips. Test noise is the SpeechBrain test noises, the Picovoice and noisereduce noise
clips, the DeepFilterNet noise clip and the Moodist "transport" category.

This module imports neither torch nor numpy, so the bench can use it on its own.
"""

from __future__ import annotations

from pathlib import Path

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(
        p for p in root.glob(pattern) if p.is_file() and p.suffix in AUDIO_SUFFIXES
    )


def train_speech(root: Path) -> list[Path]:
    """Clean read speech for training: LibriSpeech train-clean-100 and a VCTK clip.

    The GPL-2 recordings in the data folder (the Czech game dialogue and the ALSA
    voice prompts) are left out, because the data's rules keep GPL audio for
    evaluation only. Both the LibriSpeech and the VCTK sources are CC BY 4.0.
    """
    return _files(
        root, "librispeech_resemblyzer/librispeech_train-clean-100/*"
    ) + _files(root, "audiomentations_demo/p286_011.wav")


def test_speech(root: Path) -> list[Path]:
    """Held-out speakers: LibriSpeech test-other and the librosa LibriSpeech clips."""
    return _files(root, "librispeech_resemblyzer/librispeech_test-other/*/*") + _files(
        root, "librispeech_librosa_data/*"
    )


def train_noise(root: Path) -> list[Path]:
    """Real noise recordings for training: ambiences, appliances, handling noise."""
    moodist = [
        p
        for p in _files(root, "moodist_sounds/*/*")
        if p.parent.name not in TEST_MOODIST_CATEGORIES
    ]
    return (
        _files(root, "blanket_sounds/*")
        + moodist
        + _files(root, "audiomentations_demo/background_noises/*")
        + _files(root, "audiomentations_demo/short_noises/*")
    )


TEST_MOODIST_CATEGORIES = {"transport"}


def test_noise(root: Path) -> list[Path]:
    """Held-out noise recordings, never mixed into training."""
    return (
        _files(root, "speechbrain_test_noise/*")
        + _files(root, "picovoice_koala/noise.wav")
        + _files(root, "noisereduce_assets/cafe_short.wav")
        + _files(root, "deepfilternet_assets/noise_freesound_573577.wav")
        + [
            p
            for p in _files(root, "moodist_sounds/*/*")
            if p.parent.name in TEST_MOODIST_CATEGORIES
        ]
    )
