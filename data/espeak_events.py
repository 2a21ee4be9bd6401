"""Speak one text with espeak-ng's library and print, as JSON, its phonemes and the sample where each starts.

    python data/espeak_events.py VOICE RATE TEXT [--ipa]

This is what ``espeak-ng -v VOICE -s RATE --stdout TEXT`` does (same library, same calls, same flags),
with phoneme events switched on. Each event gives the phoneme's name (espeak-ng's mnemonic, as
``espeak-ng -x`` prints it without stress marks, or its IPA with ``--ipa``) and the output sample at
which espeak-ng's wave generator starts it. The last event, ``_``, is the end of the audio.

One text per process: espeak-ng keeps state from one synthesis to the next inside a process (the same
text spoken twice came out 204 samples shorter the second time), so only a fresh process speaks
exactly the samples of the ``espeak-ng`` command. The output's ``sha256`` (of the 16-bit samples) lets the caller
check that. Standard library only, so that it starts fast (needs ``libespeak-ng.so.1``, which the
Debian/Ubuntu ``espeak-ng`` package installs).

Output: ``{"sample_rate", "num_samples", "sha256", "phonemes": [[name, sample], ...],
"words": [[character position in TEXT (1-based), sample], ...]}``.
"""

import ctypes
import hashlib
import json
import sys

# Constants of espeak-ng's speak_lib.h.
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS, INITIALIZE_PHONEME_IPA = 0x0001, 0x0002
EVENT_WORD, EVENT_PHONEME = 1, 7
PARAMETER_RATE = 1
POSITION_CHARACTER = 1
COMMAND_LINE_FLAGS = 0x1100  # espeakCHARS_AUTO | espeakPHONEMES | espeakENDPAUSE, as the espeak-ng command


class Event(ctypes.Structure):
    """speak_lib.h's espeak_EVENT (the ``id`` union read as its 8-byte phoneme name)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("name", ctypes.c_char * 8)]


Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(Event))


def speak(voice: str, rate: int, text: str, ipa: bool = False) -> dict:
    lib = ctypes.CDLL("libespeak-ng.so.1")
    options = INITIALIZE_PHONEME_EVENTS | (INITIALIZE_PHONEME_IPA if ipa else 0)
    sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options)
    if sample_rate <= 0:
        sys.exit("espeak_Initialize failed")
    digest, phonemes, words, count = hashlib.sha256(), [], [], [0]

    def collect(wav, num_samples, events):
        if wav and num_samples > 0:
            digest.update(ctypes.string_at(wav, 2 * num_samples))
            count[0] += num_samples
        i = 0
        while events[i].type != 0:  # the list ends with espeakEVENT_LIST_TERMINATED
            event = events[i]
            if event.type == EVENT_PHONEME:
                phonemes.append([event.name.decode(), event.sample])
            elif event.type == EVENT_WORD:
                words.append([event.text_position, event.sample])
            i += 1
        return 0

    callback = Callback(collect)  # kept referenced until synthesis is over
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        sys.exit(f"espeak-ng has no voice {voice!r}")
    lib.espeak_SetParameter(PARAMETER_RATE, rate, 0)
    encoded = text.encode()
    lib.espeak_Synth(encoded, len(encoded) + 1, 0, POSITION_CHARACTER, 0, COMMAND_LINE_FLAGS, None, None)
    lib.espeak_Synchronize()
    return {"sample_rate": sample_rate, "num_samples": count[0], "sha256": digest.hexdigest(),
            "phonemes": phonemes, "words": words}


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--ipa"]
    if len(arguments) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    print(json.dumps(speak(arguments[0], int(arguments[1]), arguments[2], ipa="--ipa" in sys.argv[1:])))
