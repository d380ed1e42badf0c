"""A search space as editable text, one line per slot, and back.

``3. green [antonym]: white, orange, red`` - the label before the colon names the slot of the built space, the
substitutes after it are what the search may choose besides the user's own word (or besides no negative term).
Removing a substitute or adding one is editing that list; deleting a line drops the slot. Slots cannot be invented
(a positive slot must sit on a word of the prompt, which the label pins down).
"""

from __future__ import annotations

from dataclasses import replace

from dpo_diff.space import SearchSpace, Slot, SpaceError


def slot_label(i: int, slot: Slot) -> str:
    kind = "nplib" if not slot.word else ("synonym" if slot.target == "positive" else "antonym")
    return f"{i + 1}. {slot.word or '(nplib)'} [{kind}]"


def space_to_text(space: SearchSpace) -> str:
    return "\n".join(f"{slot_label(i, s)}: {', '.join(s.options[1:])}" for i, s in enumerate(space.slots))


def text_to_space(text: str, built: SearchSpace) -> SearchSpace:
    """The space ``built`` with each slot's substitutes as ``text`` lists them; raises :class:`SpaceError` with a
    one-line message naming the offending line."""
    by_label = {slot_label(i, s): s for i, s in enumerate(built.slots)}
    slots: list[Slot] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        label, sep, rest = line.partition(":")
        slot = by_label.get(label.strip())
        if not sep or slot is None:
            known = "; ".join(by_label) or "none"
            raise SpaceError(f"space line {n} ({line.strip()!r}) names no slot of the space; keep the text before "
                             f"':' as it was built (slots: {known})")
        subs = list(dict.fromkeys(o.strip() for o in rest.split(",") if o.strip()))
        try:
            slots.append(replace(slot, options=(slot.options[0], *(o for o in subs if o != slot.options[0]))))
        except SpaceError as e:
            raise SpaceError(f"space line {n}: {e}") from None
        del by_label[label.strip()]  # a slot listed twice would be searched twice
    return SearchSpace(built.prompt, tuple(slots), built.negative_prompt, {**built.meta, "edited_in_ui": True})
