"""What the open-vocabulary families share: loading a folder that needs a tokenizer, concepts.

SAM 3, Grounding DINO and OWLv2 read text, so their folders must hold the
tokenizer files next to the processor configuration; :func:`load_text_model_folder`
checks that before transformers is asked, so a folder copied without them
gets a message that names what is missing. :func:`check_concepts` turns the
``classes`` a user typed into the list of concept prompts these models take.
"""

from __future__ import annotations

from pathlib import Path

from napari_segsuite.core.errors import CheckpointError, InputError
from napari_segsuite.models.hf_segmentation import PROCESSOR_FILES

#: Any one of these sets of files is a tokenizer a processor can load.
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",))


def check_processor_files(path: Path, title: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` holds a processor configuration and a tokenizer.

    Parameters
    ----------
    path : Path
        A transformers folder.
    title : str
        Human-readable model name for the message.
    """
    path = Path(path)
    missing = []
    if not any((path / name).is_file() for name in PROCESSOR_FILES):
        missing.append(" or ".join(PROCESSOR_FILES))
    if not any(all((path / f).is_file() for f in files) for files in TOKENIZER_FILE_SETS):
        missing.append("the tokenizer (tokenizer.json, or vocab.json + merges.txt, or vocab.txt)")
    if missing:
        raise CheckpointError(
            f"The {title} folder {path} has the model but not {' and '.join(missing)}: {title} reads "
            f"text, so its processor and tokenizer files are needed. Copy the whole folder again "
            f"(every .json and .txt file of the checkpoint), or download it again."
        )


def check_concepts(classes) -> list[str]:
    """The concept prompts in ``classes``: a list of words, or one comma-separated string.

    Returns
    -------
    list of str
        Stripped, in the given order, duplicates removed (an empty list for None).

    Raises
    ------
    InputError
        For an empty concept (``"cell,,nucleus"``, ``[""]``) or a value that is not text.
    """
    if classes is None:
        return []
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    if isinstance(classes, str) and not classes.strip():
        return []
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InputError(
                f"Concepts are words (e.g. 'cell, nucleus'), not {item!r}: open-vocabulary models "
                "have no class ids."
            )
        text = " ".join(item.split())
        if not text:
            raise InputError(
                "One of the concepts is empty. Give each concept in words, separated by commas "
                "(e.g. 'cell, nucleus')."
            )
        if text.lower() not in (c.lower() for c in out):
            out.append(text)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
