"""A small English sentence grammar of the project's own, for the synthetic corpus.

Sentences are drawn from a handful of clause patterns over a few hundred words
(statements, questions, reported speech, subordinate clauses, lists of numbers),
so lengths and wording vary the way read speech does. Everything is drawn from the
numpy `Generator` passed in: the same generator state gives the same sentence.
"""

# Word lists, packed: ruff's layout would give each word a line.
# fmt: off
NAMES = ("Anna", "Boris", "Carmen", "David", "Elena", "Felix", "Grace", "Hugo", "Irene",
         "James", "Karin", "Leo", "Maria", "Nathan", "Olga", "Peter", "Quinn", "Rosa",
         "Simon", "Tara", "Victor", "Wendy", "Yusuf", "Zoe")
ADJECTIVES = ("old", "new", "small", "large", "quiet", "busy", "bright", "dark", "early",
              "late", "green", "yellow", "heavy", "light", "strange", "famous", "local",
              "careful", "tired", "happy", "cold", "warm", "narrow", "wooden", "silver",
              "empty", "crowded", "distant", "gentle", "sudden", "modern", "rural")
NOUNS = ("teacher", "farmer", "driver", "doctor", "student", "captain", "painter", "baker",
         "river", "mountain", "village", "market", "station", "garden", "kitchen", "bridge",
         "letter", "report", "engine", "window", "basket", "ticket", "picture", "museum",
         "island", "forest", "meeting", "journey", "question", "answer", "machine",
         "company", "council", "harbour", "library", "committee", "morning", "concert")
PLURALS = {"child": "children", "person": "people", "woman": "women", "man": "men"}
PEOPLE = ("teacher", "farmer", "driver", "doctor", "student", "captain", "painter", "baker",
          "child", "person", "woman", "man", "neighbour", "engineer", "reporter", "nurse")
TRANSITIVE = ("found", "opened", "painted", "sold", "repaired", "visited", "described",
              "noticed", "carried", "ordered", "built", "cleaned", "measured", "borrowed",
              "watched", "followed", "answered", "signed", "delivered", "questioned")
INTRANSITIVE = ("arrived", "waited", "laughed", "stopped", "returned", "disappeared",
                "agreed", "slept", "complained", "hesitated", "smiled", "listened")
PRESENT = ("likes", "needs", "remembers", "expects", "prefers", "imagines", "recommends")
ADVERBS = ("slowly", "quickly", "quietly", "carefully", "suddenly", "finally", "again",
           "almost", "already", "gladly", "barely", "easily")
PREPOSITIONS = ("near", "behind", "under", "beside", "across", "inside", "along", "beyond",
                "around", "toward")
TIMES = ("yesterday", "last week", "on Monday", "this morning", "in the evening",
         "after lunch", "before dawn", "every summer", "at noon", "two days ago",
         "later that night", "in the spring")
CONJUNCTIONS = ("because", "while", "although", "after", "before", "until", "since",
                "as soon as")
REPORTING = ("said", "explained", "believed", "claimed", "heard", "wrote", "mentioned")
QUESTION_WORDS = ("why", "where", "when", "how")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "twenty", "thirty", "forty", "fifty", "a hundred")
OBJECTS = ("boxes", "letters", "tickets", "chairs", "apples", "books", "bottles", "coins",
           "lamps", "maps", "songs", "stones")
# fmt: on


def _pick(rng, words):
  return words[int(rng.integers(len(words)))]


def _plural(noun):
  if noun in PLURALS:
    return PLURALS[noun]
  return noun[:-1] + "ies" if noun.endswith("y") and noun[-2] not in "aeiou" else noun + "s"


def _noun_phrase(rng, nouns=NOUNS):
  """A determiner, up to two adjectives and a noun, or a name."""
  if nouns is PEOPLE and rng.random() < 0.3:
    return _pick(rng, NAMES)
  noun = _pick(rng, nouns)
  count = int(rng.choice(3, p=[0.4, 0.45, 0.15]))
  adjectives = [ADJECTIVES[i] for i in rng.choice(len(ADJECTIVES), size=count, replace=False)]
  if rng.random() < 0.25:
    return " ".join(["the", *adjectives, _plural(noun)])
  determiner = _pick(rng, ("the", "a", "this", "that", "our", "their", "every"))
  if determiner == "a" and (adjectives or [noun])[0][0] in "aeiou":
    determiner = "an"
  return " ".join([determiner, *adjectives, noun])


def _adjunct(rng):
  """A prepositional phrase or a time expression, or nothing."""
  roll = rng.random()
  if roll < 0.35:
    return f"{_pick(rng, PREPOSITIONS)} {_noun_phrase(rng)}"
  if roll < 0.6:
    return _pick(rng, TIMES)
  return ""


def _clause(rng):
  subject = _noun_phrase(rng, PEOPLE)
  adverb = f" {_pick(rng, ADVERBS)}" if rng.random() < 0.3 else ""
  if rng.random() < 0.65:
    body = f"{subject}{adverb} {_pick(rng, TRANSITIVE)} {_noun_phrase(rng)}"
  else:
    body = f"{subject}{adverb} {_pick(rng, INTRANSITIVE)}"
  adjunct = _adjunct(rng)
  return f"{body} {adjunct}" if adjunct else body


def _statement(rng):
  return _clause(rng)


def _complex(rng):
  return f"{_clause(rng)} {_pick(rng, CONJUNCTIONS)} {_clause(rng)}"


def _reported(rng):
  return f"{_pick(rng, NAMES)} {_pick(rng, REPORTING)} that {_clause(rng)}"


def _question(rng):
  if rng.random() < 0.5:
    return (
      f"{_pick(rng, QUESTION_WORDS)} did {_noun_phrase(rng, PEOPLE)} "
      f"{_pick(rng, ('leave', 'call', 'stay', 'wait', 'change'))} {_adjunct(rng)}"
    ).strip()
  return f"did {_noun_phrase(rng, PEOPLE)} see {_noun_phrase(rng)} {_adjunct(rng)}".strip()


def _preference(rng):
  return f"{_noun_phrase(rng, PEOPLE)} {_pick(rng, PRESENT)} {_noun_phrase(rng)}"


def _counting(rng):
  return (
    f"{_pick(rng, NAMES)} counted {_pick(rng, NUMBERS)} {_pick(rng, OBJECTS)} and "
    f"{_pick(rng, NUMBERS)} {_pick(rng, OBJECTS)} {_adjunct(rng)}"
  ).strip()


_PATTERNS = (
  (_statement, 0.3),
  (_complex, 0.2),
  (_reported, 0.15),
  (_question, 0.15),
  (_preference, 0.1),
  (_counting, 0.1),
)


def sentence(rng):
  """One sentence, capitalised and punctuated, drawn from `rng` (a numpy Generator)."""
  weights = [weight for _, weight in _PATTERNS]
  pattern = _PATTERNS[int(rng.choice(len(_PATTERNS), p=weights))][0]
  words = " ".join(pattern(rng).split())
  mark = "?" if pattern is _question else "."
  return words[0].upper() + words[1:] + mark


def sentence_with_length(rng, min_words, max_words, max_tries=100):
  """A sentence of `min_words` to `max_words` words (drawn until one fits)."""
  for _ in range(max_tries):
    text = sentence(rng)
    if min_words <= len(text.split()) <= max_words:
      return text
  raise ValueError(f"no sentence of {min_words} to {max_words} words in {max_tries} draws")
