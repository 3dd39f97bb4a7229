#!/usr/bin/env python3
"""Write the synthetic sample data in data/sample/ (stdlib only, seeded: same seed, same bytes).

Everything is invented for this project: company and person names, figures and events are made up, and any
resemblance to a real company is coincidental. Sentences imitate financial news in the style of the
Financial PhraseBank ("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in
2007.") so that recipe defaults tuned on the sample carry over to real data of that kind.

Sentiment labels follow fixed rules, from the point of view of an investor in the company named:
- positive: a good metric (sales, profit, orders, margin) goes up or a bad one (loss, costs, debt) goes down;
  a loss turns into a profit; results beat estimates; orders won, guidance raised, hiring, expansion.
- negative: the mirror image; job cuts, plant closures, profit warnings, guidance cut.
- neutral: facts without a direction (figures that "totalled", unchanged figures, report dates,
  appointments, deals, company descriptions, share-capital changes, "declined to comment").
- forecasts and hedged forecasts keep the direction ("expects net sales to decline slightly" is negative);
  negation flips it ("does not expect costs to rise" is positive).
- mixed sentences: the profitability clause decides ("net sales rose, but operating profit fell" is negative).

Usage: python data/sample/generate.py [--out DIR] [--seed N]
       python data/sample/generate.py --out DIR --only sentiment --sentiment-rows 4000 --label-noise 0.03 --seed 7
       (a Financial-PhraseBank-sized labelled set; from code: ``write_sentiment(path, rows, seed, label_noise)``)
"""

from __future__ import annotations

import argparse
import csv
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
SAMPLE_DIR = Path(__file__).resolve().parent
CORPUS_LINES = 1300
GENERAL_LINES = 320
NER_SENTENCES = 480
# Roughly the class mix of real financial-news sentiment data (about 59 / 28 / 12 % in the PhraseBank).
SENTIMENT_COUNTS = {"neutral": 580, "positive": 285, "negative": 140}
SOURCE_SHARE_NEWSWIRE = 0.45

# ---------------------------------------------------------------------------------------------------------
# Vocabularies (all names invented)
# ---------------------------------------------------------------------------------------------------------
# fmt: off
COMPANY_STEMS = [
    "Halvora", "Kivimaa", "Sarvento", "Northbay", "Arkland", "Veltrix", "Lindqvist", "Marenco", "Talvik",
    "Ruskola", "Solvenna", "Brandholm", "Kalmora", "Vesterby", "Ilvento", "Aurelio", "Pellinge", "Hakanen",
    "Mustavaara", "Nordhavn", "Saaristo", "Korvenkylä", "Baltic Crane", "Nordic Fibre", "Lakeside Timber",
    "Polaris Cable", "Tornvik", "Sundberg", "Ekholm", "Fjellstad", "Granlund", "Hietala", "Isokari",
    "Jokiranta", "Kaskela", "Lumora", "Meriva", "Nyberg", "Oravala", "Pohjanmeri", "Rautavesi", "Silvanto",
    "Tammela Works", "Uusikylä", "Valkama", "Wessel", "Ylivuori", "Aaltomaa", "Bergvik", "Corvalis",
    "Dalholm", "Elvira Foods", "Frostline", "Glacier Systems", "Heliox", "Inari Minerals", "Jarvana",
    "Kestrel", "Lapwing", "Midgard Marine", "Northwind Logistics", "Osprey Media", "Pinewood", "Quartzline",
    "Riverton", "Stellan", "Tundra Steel", "Ulvila", "Vireo", "Westmark", "Zenitra", "Aster Pharma",
]
COMPANY_SUFFIXES = [
    "Oyj", "Group", "Corporation", "AB", "ASA", "Plc", "Holding", "Technologies", "Industries", "Oyj", "Group",
]
# (sector noun, products, products are bulk goods measured in tonnes)
SECTORS = [
    ("paper maker", "paper and packaging board", True), ("engineering group", "industrial machinery", False),
    ("software company", "software services", False), ("IT services provider", "IT services", False),
    ("retailer", "consumer goods", False), ("steel maker", "steel products", True),
    ("shipping company", "sea freight services", False), ("media group", "newspapers and magazines", False),
    ("food company", "dairy products", True), ("construction company", "construction services", False),
    ("telecom equipment maker", "mobile network equipment", False),
    ("elevator maker", "elevators and escalators", False), ("forest machine maker", "forest machines", False),
    ("cable maker", "power and data cables", False), ("marine engine maker", "marine engines", False),
    ("pharmaceutical company", "generic medicines", False),
    ("equipment rental company", "rental equipment", False), ("logistics group", "logistics services", False),
    ("energy company", "electricity and heat", False), ("packaging company", "packaging materials", True),
    ("mining company", "nickel and zinc concentrate", True), ("electronics maker", "electronic components", False),
    ("furniture maker", "office furniture", False), ("chemicals group", "industrial chemicals", True),
    ("wind power supplier", "wind turbine components", False), ("sawmill group", "sawn timber", True),
]
# Names that say what the company does get the matching sector.
SECTOR_HINTS = {
    "Crane": "engineering group", "Fibre": "paper maker", "Timber": "sawmill group", "Cable": "cable maker",
    "Works": "engineering group", "Foods": "food company", "Systems": "software company",
    "Minerals": "mining company", "Marine": "marine engine maker", "Logistics": "logistics group",
    "Media": "media group", "Steel": "steel maker", "Pharma": "pharmaceutical company",
}
EXCHANGES = ["Helsinki", "Stockholm", "Oslo", "Copenhagen", "London", "Frankfurt"]
NATIONALITIES = [
    "Finnish", "Finnish", "Finnish", "Swedish", "Norwegian", "Danish", "Estonian", "German", "British",
    "Finland-based", "Helsinki-based", "Nordic",
]
FIRST_NAMES = [
    "Matti", "Jukka", "Anna", "Sari", "Mikko", "Kari", "Pekka", "Liisa", "Johan", "Erik", "Ingrid", "Timo",
    "Heikki", "Maria", "Lars", "Sanna", "Jari", "Tiina", "Petri", "Katja", "Olli", "Helena", "Markus", "Riitta",
]
LAST_NAMES = [
    "Lahtinen", "Virtanen", "Nieminen", "Korhonen", "Lindberg", "Holm", "Salonen", "Heikkinen", "Koskinen",
    "Andersson", "Berg", "Mäkelä", "Rantanen", "Laine", "Järvinen", "Nyström", "Hakala", "Lehto", "Karlsson",
    "Aalto",
]
ROLES = [
    "President and CEO", "Chief Financial Officer", "CFO", "Senior Vice President, Sales",
    "chairman of the board", "head of investor relations", "Executive Vice President, Operations",
    "managing director of the Swedish subsidiary",
]
CITIES = [
    "Helsinki", "Stockholm", "Oslo", "Tallinn", "Copenhagen", "London", "Frankfurt", "Tampere", "Turku",
    "Oulu", "Gothenburg", "Riga", "Vilnius", "Warsaw", "Shanghai", "St Petersburg", "Jyväskylä", "Vaasa",
    "Lahti", "Pori", "Kuopio", "Hamburg",
]
COUNTRIES = [
    "Finland", "Sweden", "Norway", "Denmark", "Estonia", "Germany", "Poland", "Russia", "China", "the UK",
    "the US", "Latvia", "Lithuania", "India", "Brazil",
]
REGIONS = [
    "Russia", "the Baltic countries", "Scandinavia", "Central Europe", "Asia", "North America", "China",
    "the Nordic countries", "Western Europe", "Eastern Europe",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]
QUARTERS = ["first", "second", "third", "fourth"]
MONTH_RANGES = ["January-March", "April-June", "July-September", "October-December", "January-June",
                "January-September"]
YEARS = list(range(2004, 2011))
CURRENCIES = ["EUR"] * 7 + ["USD"] * 2 + ["GBP"]
DEGREES = ["slightly", "clearly", "significantly", "substantially", "somewhat", "moderately", "sharply"]
FORECAST_DEGREES = ["slightly", "clearly", "significantly", "somewhat", "moderately"]
DEMAND_SOURCES = ["the construction sector", "the paper industry", "telecom operators", "the car industry",
                  "retail customers", "the public sector", "shipyards", "the energy sector"]


@dataclass(frozen=True)
class Company:
    name: str  # full legal-style name, e.g. "Halvora Oyj"
    short: str  # the name as news text uses it after the first mention, e.g. "Halvora"
    nationality: str
    sector: str  # "paper maker"
    product: str  # "paper and packaging board"
    bulk: bool  # products measured in tonnes


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # money | eps | pct
    polarity: int  # +1: more is good for the company (sales, profit), -1: more is bad (loss, costs, debt)
    family: str  # sales | profit | cost -- the profitability clause decides mixed sentences
    plural: bool = False


METRICS = [
    Metric("net sales", "money", 1, "sales", plural=True), Metric("revenue", "money", 1, "sales"),
    Metric("turnover", "money", 1, "sales"), Metric("order intake", "money", 1, "sales"),
    Metric("order backlog", "money", 1, "sales"), Metric("market share", "pct", 1, "sales"),
    Metric("operating profit", "money", 1, "profit"), Metric("comparable operating profit", "money", 1, "profit"),
    Metric("net profit", "money", 1, "profit"), Metric("profit before taxes", "money", 1, "profit"),
    Metric("pre-tax profit", "money", 1, "profit"), Metric("EBITDA", "money", 1, "profit"),
    Metric("earnings per share", "eps", 1, "profit", plural=True), Metric("operating margin", "pct", 1, "profit"),
    Metric("cash flow from operations", "money", 1, "profit"),
    Metric("operating loss", "money", -1, "profit"), Metric("net loss", "money", -1, "profit"),
    Metric("pre-tax loss", "money", -1, "profit"), Metric("fixed costs", "money", -1, "cost", plural=True),
    Metric("production costs", "money", -1, "cost", plural=True), Metric("net debt", "money", -1, "cost"),
]
SALES_METRICS = [m for m in METRICS if m.family == "sales" and m.kind == "money"]
PROFIT_METRICS = [m for m in METRICS if m.family == "profit"]

# Past-tense verbs by (metric polarity, direction); the infinitive follows each.
VERBS = {
    (1, "up"): [("rose", "rise"), ("increased", "increase"), ("grew", "grow"), ("climbed", "climb"),
                ("went up", "go up"), ("jumped", "jump")],
    (1, "down"): [("fell", "fall"), ("decreased", "decrease"), ("declined", "decline"), ("dropped", "drop"),
                  ("went down", "go down"), ("slipped", "slip")],
    (-1, "up"): [("increased", "increase"), ("grew", "grow"), ("widened", "widen"), ("rose", "rise")],
    (-1, "down"): [("decreased", "decrease"), ("narrowed", "narrow"), ("fell", "fall"), ("shrank", "shrink")],
}
PROFIT_EXTRA = {"up": [("improved", "improve")], "down": [("weakened", "weaken")]}
LOSS_ONLY = {"widened", "narrowed", "shrank", "widen", "narrow", "shrink"}

FINANCE_WORDS = {
    "profit", "profits", "sales", "revenue", "revenues", "turnover", "eur", "usd", "gbp", "mn", "bn", "shares",
    "share", "stock", "stocks", "market", "markets", "dividend", "dividends", "quarter", "quarterly",
    "company", "companies", "bank", "banks", "price", "prices", "cost", "costs", "earnings", "investor",
    "investors", "million", "billion", "percent", "loss", "losses", "ebitda", "fiscal", "financial",
    "economy", "interest", "tax", "taxes", "debt", "equity", "bond", "bonds", "trade", "trading", "currency",
    "euro", "euros", "dollar", "dollars", "pound", "pounds", "budget", "invest", "investment", "payment", "salary", "wage", "wages", "money", "cash", "credit", "loan", "loans", "inflation",
}
# fmt: on


def make_companies(rng: random.Random) -> list[Company]:
    companies = []
    for stem in COMPANY_STEMS:
        sector, product, bulk = rng.choice(SECTORS)
        for hint, hinted in SECTOR_HINTS.items():
            if hint in stem.split():
                sector, product, bulk = next(s for s in SECTORS if s[0] == hinted)
        # Stems that already read like a full name ("Baltic Crane") mostly keep a legal suffix too.
        suffix = rng.choice(COMPANY_SUFFIXES)
        companies.append(Company(f"{stem} {suffix}", stem, rng.choice(NATIONALITIES), sector, product, bulk))
    return companies


# ---------------------------------------------------------------------------------------------------------
# Numbers and time expressions
# ---------------------------------------------------------------------------------------------------------
def fmt_num(value: float, decimals: int = 1) -> str:
    text = f"{value:,.{decimals}f}"
    return text


def fmt_pct(value: float) -> str:
    text = f"{value:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + " %"


def money_text(currency: str, value_mn: float, unit: str) -> str:
    """'EUR 13.1 mn', 'USD 1.2 billion', 'GBP 450,000' (small amounts written out)."""
    if value_mn >= 1000:
        return f"{currency} {value_mn / 1000:.1f} {'bn' if unit == 'mn' else 'billion'}"
    if value_mn < 1 and unit == "million":
        return f"{currency} {int(round(value_mn * 1000)) * 1000:,}"
    return f"{currency} {fmt_num(value_mn)} {unit}"


class Amounts:
    """Consistent figures for one sentence: the same currency and unit style throughout."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.currency = rng.choice(CURRENCIES)
        self.unit = "mn" if rng.random() < 0.7 else "million"

    def base(self, kind: str) -> float:
        r = self.rng
        if kind == "eps":
            return round(r.uniform(0.05, 3.5), 2)
        if kind == "pct":
            return round(r.uniform(1.5, 28.0), 1)
        scale = r.random()
        if scale < 0.45:
            return round(r.uniform(0.5, 25.0), 1)
        if scale < 0.85:
            return round(r.uniform(25.0, 400.0), 1)
        return round(r.uniform(400.0, 3500.0), 1)

    def text(self, kind: str, value: float) -> str:
        if kind == "eps":
            return f"{self.currency} {value:.2f}"
        if kind == "pct":
            return fmt_pct(value)
        return money_text(self.currency, value, self.unit)

    def pair(self, kind: str, direction: str) -> tuple[str, str, str]:
        """(old, new, relative change) whose written forms really move in ``direction``."""
        while True:
            old = self.base(kind)
            factor = self.rng.uniform(1.03, 2.2) if direction == "up" else self.rng.uniform(0.35, 0.97)
            new = round(old * factor, 2 if kind == "eps" else 1)
            old_text, new_text = self.text(kind, old), self.text(kind, new)
            if new > 0 and old_text != new_text and (new > old) == (direction == "up"):
                change = fmt_pct(abs(new / old - 1) * 100)
                if change != "0 %":
                    return old_text, new_text, change

    def one(self, kind: str) -> str:
        return self.text(kind, self.base(kind))


def period(rng: random.Random, year: int) -> tuple[str, str]:
    """A reporting period and the same period a year earlier."""
    choice = rng.random()
    if choice < 0.3:
        q = rng.choice(QUARTERS)
        return f"the {q} quarter of {year}", f"the {q} quarter of {year - 1}"
    if choice < 0.55:
        return str(year), str(year - 1)
    if choice < 0.75:
        m = rng.choice(MONTH_RANGES)
        return f"{m} {year}", f"{m} {year - 1}"
    if choice < 0.9:
        h = rng.choice(["first", "second"])
        return f"the {h} half of {year}", f"the {h} half of {year - 1}"
    return f"the financial year {year}", f"the financial year {year - 1}"


def a_date(rng: random.Random, year: int) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {year}"


def possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def report_date(rng: random.Random, quarter: str, year: int) -> str:
    """A publication date a few weeks after the quarter closes."""
    month = {
        "first": rng.choice(["April", "May"]),
        "second": rng.choice(["July", "August"]),
        "third": rng.choice(["October", "November"]),
    }[quarter]
    return f"{rng.randint(1, 28)} {month} {year}"


def capitalize(text: str) -> str:
    return text[0].upper() + text[1:] if text else text


def finish(text: str) -> str:
    text = capitalize(text.strip())
    return text if text.endswith((".", "?", "!")) else text + "."


def verb_for(rng: random.Random, metric: Metric, direction: str, infinitive: bool = False) -> str:
    options = list(VERBS[(metric.polarity, direction)])
    if metric.polarity > 0 and metric.family == "profit":
        options += PROFIT_EXTRA[direction]
    if metric.kind == "pct" or metric.family == "cost":
        options = [o for o in options if o[0] not in LOSS_ONLY]
    past, inf = rng.choice(options)
    return inf if infinitive else past


def be(metric: Metric, past: bool = True) -> str:
    if past:
        return "were" if metric.plural else "was"
    return "are" if metric.plural else "is"


def label_of(metric: Metric, direction: str) -> str:
    good = (direction == "up") == (metric.polarity > 0)
    return "positive" if good else "negative"


# ---------------------------------------------------------------------------------------------------------
# Sentence builders. Each returns (text, label); ``style`` is newswire or press_release.
# ---------------------------------------------------------------------------------------------------------
class Writer:
    def __init__(self, rng: random.Random, companies: list[Company]):
        self.rng = rng
        self.companies = companies

    # -- helpers ------------------------------------------------------------------------------------------
    def company(self) -> Company:
        return self.rng.choice(self.companies)

    def other(self, co: Company) -> Company:
        while True:
            other = self.rng.choice(self.companies)
            if other != co:
                return other

    def person(self) -> str:
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"

    def intro(self, co: Company) -> str:
        """How newswire names a company on first mention."""
        r = self.rng.random()
        if r < 0.35:
            return f"{co.nationality} {co.short}"
        if r < 0.6:
            return f"{co.nationality} {co.sector} {co.short}"
        if r < 0.8:
            return co.name
        return co.short

    def subject(self, co: Company, metric: Metric, style: str) -> tuple[str, str]:
        """(subject phrase ending in the metric, trailing attribution or '')."""
        r = self.rng.random()
        m = metric.name
        if style == "press_release":
            options = [m, m, f"the company's {m}", f"the Group's {m}", f"{possessive(co.short)} {m}"]
            if metric.family != "cost":
                options.append(f"consolidated {m}")
            return self.rng.choice(options), ""
        if r < 0.25:
            return f"{self.intro(co)} said its {m}", ""
        if r < 0.4:
            return f"{self.intro(co)} reported that its {m}", ""
        if r < 0.5:
            return f"{co.short} said on {self.rng.choice(WEEKDAYS)} that its {m}", ""
        if r < 0.6:
            return f"{self.intro(co)} reports its {m}", ""
        if r < 0.8:
            return f"{possessive(co.short)} {m}", ""
        return m, self.rng.choice([", the company said", f", {co.short} said", f", {co.short} reported"])

    # -- directional statements ---------------------------------------------------------------------------
    def change(self, co: Company, metric: Metric, direction: str, style: str, year: int) -> str:
        r = self.rng
        amounts = Amounts(r)
        old, new, rel = amounts.pair(metric.kind, direction)
        subj, tail = self.subject(co, metric, style)
        verb = verb_for(r, metric, direction)
        cur, prev = period(r, year)
        front = style == "press_release" and r.random() < 0.3
        when = "" if front else f" in {cur}"
        pattern = r.randrange(8 if metric.kind != "pct" else 5)
        if pattern == 0:
            body = f"{subj} {verb} to {new} from {old} in the corresponding period in {year - 1}"
            if front:
                body = f"{subj} {verb} to {new} from {old} a year earlier"
        elif pattern == 1:
            body = f"{subj} {verb} to {new}{when} from {old} in {prev}"
        elif pattern == 2:
            body = f"{subj} {verb} to {new}{when} ({old})"
        elif pattern == 3:
            body = f"{subj} {verb} {r.choice(DEGREES)}{when}"
        elif pattern == 4:
            body = f"{subj} {verb} to {new}{when}, compared with {old} a year earlier"
        elif pattern == 5:
            body = f"{subj} {verb} by {rel} to {new}{when}"
        elif pattern == 6:
            updown = "up" if direction == "up" else "down"
            body = f"{subj} {be(metric)} {updown} {rel} year-on-year at {new}{when}"
        else:
            body = f"{subj} {verb} {rel}{when} from the previous year"
        if front:
            body = f"In {cur}, {body}"
        return finish(body + tail)

    def forecast(
        self, co: Company, metric: Metric, direction: str, style: str, year: int, negated: bool = False
    ) -> str:
        r = self.rng
        m = metric.name
        inf = verb_for(r, metric, direction, infinitive=True)
        deg = f" {r.choice(FORECAST_DEGREES)}" if r.random() < 0.45 else ""
        who = self.intro(co) if style == "newswire" else r.choice(["The company", "The Group", co.short])
        if negated:
            options = [
                f"{who} does not expect its {m} to {inf} in {year}",
                f"{who} said it does not expect {m} to {inf}{deg} in {year}",
                f"{capitalize(m)} {be(metric, past=False)} not expected to {inf} in {year}",
                f"The company does not anticipate that its {m} will {inf} in {year}",
            ]
            return finish(r.choice(options))
        low = r.randint(2, 12)
        options = [
            f"{who} expects its {m} to {inf}{deg} in {year}",
            f"{who} expects {m} to {inf}{deg} in {year}",
            f"{who} estimates that its {m} will {inf}{deg} in {year}",
            f"{capitalize(m)} {be(metric, past=False)} expected to {inf}{deg} in {year}",
            f"{capitalize(m)} {be(metric, past=False)} likely to {inf}{deg} in {year}",
            f"{capitalize(m)} may {inf}{deg} in {year}",
            f"According to the company's estimate, {m} will {inf}{deg} in {year}",
            f"In {year}, {m} {'are' if metric.plural else 'is'} expected to {inf}{deg} from the previous year",
            f"{who} anticipates that its {m} for {year} will {inf}{deg} compared with {year - 1}",
        ]
        if metric.kind == "money" and "widen" not in inf and "narrow" not in inf and "shrink" not in inf:
            options.append(f"{who} forecasts its {m} to {inf} by {low}-{low + r.randint(2, 8)} % in {year}")
        if style == "newswire":
            options.append(f"{co.short} said it expects its {m} to {inf}{deg} in {year}")
        return finish(r.choice(options))

    def no_longer(self, co: Company, style: str, year: int) -> str:
        """'No longer expects growth' -- always negative."""
        metric = self.rng.choice([m for m in METRICS if m.polarity > 0])
        inf = verb_for(self.rng, metric, "up", infinitive=True)
        who = self.intro(co) if style == "newswire" else "The company"
        return finish(f"{who} no longer expects its {metric.name} to {inf} in {year}")

    def versus_estimates(self, co: Company, good: bool, style: str, year: int) -> str:
        r = self.rng
        metric = r.choice([m for m in PROFIT_METRICS + SALES_METRICS if m.polarity > 0 and m.kind != "pct"])
        amounts = Amounts(r)
        actual_low, actual_high, _ = amounts.pair(metric.kind, "up")
        actual, estimate = (actual_high, actual_low) if good else (actual_low, actual_high)
        cur, _ = period(r, year)
        subj = (
            f"{possessive(co.short)} {metric.name} in {cur}"
            if style == "newswire"
            else f"{capitalize(metric.name)} in {cur}"
        )
        if good:
            verb = r.choice(
                [
                    "beat analysts' average estimate of",
                    "exceeded the analysts' consensus of",
                    "came in above the market forecast of",
                ]
            )
            alt = f"{subj} {be(metric)} better than expected at {actual}"
        else:
            verb = r.choice(
                [
                    "fell short of analysts' average estimate of",
                    "missed the analysts' consensus of",
                    "came in below the market forecast of",
                ]
            )
            alt = f"{subj} {be(metric)} weaker than expected at {actual}"
        return finish(alt if r.random() < 0.25 else f"{subj} of {actual} {verb} {estimate}")

    def swing(self, co: Company, positive: bool, style: str, year: int) -> str:
        r = self.rng
        amounts = Amounts(r)
        a, b = amounts.one("money"), amounts.one("money")
        cur, prev = period(r, year)
        who = self.intro(co) if style == "newswire" else r.choice(["The company", "The Group", co.short])
        kind = r.choice(["operating", "net", "pre-tax"])
        if positive:
            options = [
                f"{who} swung to an {kind} profit of {a} in {cur} from a loss of {b} in {prev}",
                f"{who} returned to profit in {cur}, posting an {kind} profit of {a}",
                f"The {kind} result turned positive in {cur} and was {a}, compared with a loss of {b}",
                f"{who} turned an {kind} loss of {b} into a profit of {a} in {cur}",
            ]
        else:
            options = [
                f"{who} swung to an {kind} loss of {a} in {cur} from a profit of {b} in {prev}",
                f"{who} posted an {kind} loss of {a} in {cur}, compared with a profit of {b} a year earlier",
                f"The {kind} result turned to a loss of {a} in {cur}",
                f"{who} fell into the red in {cur} with an {kind} loss of {a}",
            ]
        return finish(r.choice(options).replace("an pre-tax", "a pre-tax").replace("an net", "a net"))

    def short_clause(self, metric: Metric, direction: str, amounts: Amounts) -> str:
        r = self.rng
        old, new, rel = amounts.pair(metric.kind, direction)
        verb = verb_for(r, metric, direction)
        options = [
            f"{metric.name} {verb} to {new}",
            f"{metric.name} {verb} {r.choice(DEGREES)}",
            f"{metric.name} {verb} to {new} from {old}",
        ]
        if metric.kind != "pct":  # a relative change of a margin reads ambiguously
            options.append(f"{metric.name} {verb} {rel}")
        return r.choice(options)

    def mixed(self, co: Company, label: str, style: str, year: int) -> str:
        """Sales and profit move in opposite directions; the profitability clause decides the label."""
        r = self.rng
        profit = r.choice(PROFIT_METRICS)
        profit_dir = "up" if (label == "positive") == (profit.polarity > 0) else "down"
        sales = r.choice(SALES_METRICS)
        sales_dir = "down" if label == "positive" else "up"
        amounts = Amounts(r)  # one currency per sentence
        s_clause = self.short_clause(sales, sales_dir, amounts)
        p_clause = self.short_clause(profit, profit_dir, amounts)
        cur, _ = period(r, year)
        bad_context = [
            "weak demand",
            "lower volumes",
            "the decline in net sales",
            "a difficult market",
            f"weaker demand from {r.choice(DEMAND_SOURCES)}",
            "the weak US dollar",
        ]
        good_context = [
            "the growth in net sales",
            "higher volumes",
            "strong demand",
            f"stronger demand in {r.choice(REGIONS)}",
            "record order intake",
        ]
        pattern = r.randrange(5)
        if pattern == 0:
            text = f"In {cur}, {s_clause}, but {p_clause}"
        elif pattern == 1:
            text = f"{capitalize(s_clause)} in {cur}, while {p_clause}"
        elif pattern == 2:
            text = f"Although {s_clause}, {p_clause} in {cur}"
        elif pattern == 3:
            context = r.choice(bad_context if label == "positive" else good_context)
            text = f"Despite {context}, {p_clause} in {cur}"
        else:
            text = f"{capitalize(p_clause)} in {cur}, even though {s_clause}"
        if style == "newswire" and r.random() < 0.5:
            text = text.rstrip(".") + f", {co.short} said"
        return finish(text)

    # -- neutral figures ----------------------------------------------------------------------------------
    def neutral_figure(self, co: Company, style: str, year: int) -> str:
        r = self.rng
        metric = r.choice(METRICS)
        amounts = Amounts(r)
        value = amounts.one(metric.kind)
        cur, prev = period(r, year)
        subj, tail = self.subject(co, metric, style)
        options = [
            f"{subj} totalled {value} in {cur}",
            f"{subj} amounted to {value} in {cur}",
            f"{subj} {be(metric)} {value} in {cur}",
            f"In {cur}, {subj} {be(metric)} {value}",
            f"{subj} {be(metric)} unchanged at {value} in {cur}",
            f"{subj} remained at the previous year's level of {value}",
            f"{subj} stood at {value} at the end of {r.choice(MONTHS)} {year}",
            f"{subj} {be(metric)} flat at {value}, the same level as in {prev}",
        ]
        if metric.kind == "money" and metric.family == "sales":
            options.append(
                f"{subj} {be(metric)} {value} in {cur}, of which {r.randint(20, 80)} % came from {r.choice(REGIONS)}"
            )
        return finish(r.choice(options) + tail)

    def neutral_forecast(self, co: Company, style: str, year: int) -> str:
        r = self.rng
        metric = r.choice(METRICS)
        m = metric.name
        who = self.intro(co) if style == "newswire" else r.choice(["The company", "The Group", co.short])
        options = [
            f"{who} expects its {m} in {year} to remain at the {year - 1} level",
            f"{who} expects {m} to stay roughly unchanged in {year}",
            f"{capitalize(m)} {be(metric, past=False)} expected to be on a par with {year - 1}",
            f"{who} reiterated its outlook for {year}",
            f"{who} does not give a numerical forecast for {year}",
            f"The company will give its outlook for {year} in connection with the full-year report",
            f"It is too early to estimate the impact of the arrangement on {possessive(co.short)} {m}",
            f"{who} keeps its guidance for {year} unchanged",
            f"{who} said its {m} for {year} is expected to be in line with the previous year",
        ]
        return finish(r.choice(options))

    # -- events -------------------------------------------------------------------------------------------
    def event(self, co: Company, label: str, style: str, year: int) -> str:
        r = self.rng
        amounts = Amounts(r)
        other = self.other(co)
        f = {
            "name": co.name,
            "short": co.short,
            "intro": self.intro(co),
            "sector": co.sector,
            "product": co.product,
            "other": other.name,
            "other_short": other.short,
            "city": r.choice(CITIES),
            "country": r.choice(COUNTRIES),
            "region": r.choice(REGIONS),
            "year": year,
            "n": r.choice([12, 25, 30, 40, 45, 60, 80, 95, 120, 150, 180, 240, 300, 450, 600]),
            "x": amounts.one("money"),
            "date": a_date(r, year),
            "day": r.choice(WEEKDAYS),
            "person": self.person(),
            "role": r.choice(ROLES),
            "p": fmt_pct(r.uniform(1.0, 14.0)),
            "q": r.choice(QUARTERS),
            "years": r.randint(2, 6),
            "dps": f"EUR {r.uniform(0.05, 1.6):.2f}",
            "countries": r.randint(3, 40),
            "staff": f"{r.choice([180, 450, 900, 1200, 2300, 3400, 5600, 12000]):,}",
            "founded": r.randint(1890, 1999),
            "ma_verb": r.choice(["acquire", "buy"]),
            "capacity": f"{r.choice([50, 120, 200, 350, 500])},000",
            "short_s": possessive(co.short),
            "exchange": r.choice(EXCHANGES),
            "spring_date": f"{r.randint(1, 28)} {r.choice(MONTHS[2:5])} {year}",
        }
        f["q"] = r.choice(QUARTERS[:3])
        f["report_date"] = report_date(r, f["q"], year)
        f["q1_date"] = report_date(r, "first", year)
        templates = EVENT_TEMPLATES[label][style] + EVENT_TEMPLATES[label]["both"]
        if not co.bulk:
            templates = [t for t in templates if "tonnes" not in t]
        return finish(r.choice(templates).format(**f))


# fmt: off
EVENT_TEMPLATES = {
    "positive": {
        "newswire": [
            "{intro} said on {day} it has won an order worth {x} from {other}",
            "{intro} said it had signed a {years}-year contract worth {x} with {other_short}",
            "Shares in {short} rose {p} in {exchange} after the company raised its outlook",
            "{intro} raised its full-year guidance for {year}, citing strong demand in {region}",
            "{intro} said it will hire {n} new employees in {country} as demand for its {product} grows",
            "{short} shares jumped {p} after the {sector} reported record order intake",
            "{intro} said on {day} it had won a major contract to supply {product} to {other_short}",
        ],
        "press_release": [
            "{name} has won an order worth {x} from {other}",
            "{name} has signed a {years}-year agreement worth {x} to supply {product} to {other_short}",
            "{name} raises its outlook for {year} and now expects clearly higher operating profit",
            "{name} will expand its production capacity in {country} to meet growing demand",
            "The new plant will increase {short_s} annual capacity by {capacity} tonnes",
            "{name} will recruit {n} new employees in {city} during {year}",
            "{short} has been selected as the main supplier of {product} for a project in {region}",
        ],
        "both": [
            "The order strengthens {short_s} position in {region}",
            "{short_s} credit rating was upgraded by a rating agency, citing the improved balance sheet",
            "Demand for {short_s} {product} remained strong, and the order book grew to a record level",
        ],
    },
    "negative": {
        "newswire": [
            "{intro} said on {day} it will cut {n} jobs in {country}",
            "{intro} issued a profit warning for {year}, citing weak demand in {region}",
            "Shares in {short} fell {p} in {exchange} after the company cut its outlook",
            "{intro} said it plans to close its plant in {city}, affecting some {n} employees",
            "{short} shares slumped {p} after the {sector} lowered its full-year guidance",
            "{intro} said a strike halted production at its {city} mill for two weeks",
        ],
        "press_release": [
            "{name} will reduce its workforce by up to {n} people in {country}",
            "{name} lowers its full-year outlook for {year}",
            "{name} starts temporary layoffs affecting some {n} employees in {city}",
            "{name} has decided to close its production unit in {city} due to weak profitability",
            "{name} lost a major contract with {other_short} worth about {x}",
            "{name} has recorded an impairment charge of {x} on its operations in {country}",
        ],
        "both": [
            "{short_s} credit rating was downgraded by a rating agency, citing weaker profitability",
            "Demand for {short_s} {product} weakened further, and the order book shrank",
            "The company failed to reach its profitability target for {year}",
        ],
    },
    "neutral": {
        "newswire": [
            "{intro} will publish its {q}-quarter interim report on {report_date}",
            "{intro} said on {day} it has appointed {person} as {role}",
            "A {short} spokesperson declined to comment on the figures",
            "{intro} declined to comment on market rumours about a possible sale of its {city} unit",
            "{intro} said it has completed the acquisition of {other}",
            "{intro} agreed to {ma_verb} {other_short} for {x}, the companies said on {day}",
            "{short} shares were unchanged in {exchange} trading on {day}",
            "{intro} said the value of the deal was not disclosed",
        ],
        "press_release": [
            "{name} will publish its interim report for January-March {year} on {q1_date}",
            "{name} has appointed {person} as {role}, effective {date}",
            "The board of directors proposes a dividend of {dps} per share for {year}",
            "The annual general meeting of {name} will be held in {city} on {spring_date}",
            "{name} has completed the acquisition of {other}",
            "The transaction is subject to approval by the competition authorities",
            "{short_s} share capital increased as a result of the directed share issue",
            "The number of {short} shares increased following the exercise of stock options",
            "{name} is a {sector} with operations in {countries} countries",
            "{name} employs about {staff} people and is headquartered in {city}",
            "{name} was founded in {founded} and its shares are listed on the {exchange} stock exchange",
            "The figures in this release are unaudited",
            "{name} will hold a news conference for analysts and media in {city} on {date}",
        ],
        "both": [
            "The deal is valued at {x}",
            "The company's {product} are sold mainly in {region}",
            "Sales in {country} accounted for {p} of the total",
            "{short} makes {product} and employs about {staff} people",
            "The {sector} has production facilities in {country} and {region}",
            "{person} will continue as {role} of {short}",
            "The plant has an annual capacity of {capacity} tonnes of {product}",
            "{short_s} customers include {other_short} and several other firms in {region}",
        ],
    },
}
# fmt: on


def sentiment_sentence(w: Writer, label: str, style: str) -> str:
    r = w.rng
    co, year = w.company(), r.choice(YEARS)
    if label == "neutral":
        kind = r.choices(["figure", "forecast", "event", "estimates"], weights=[36, 14, 48, 2])[0]
        if kind == "figure":
            return w.neutral_figure(co, style, year)
        if kind == "forecast":
            return w.neutral_forecast(co, style, year)
        if kind == "estimates":
            metric = r.choice(PROFIT_METRICS[:6])
            who = possessive(co.short) if style == "newswire" else "The company's"
            value = Amounts(r).one("money")
            return finish(f"{who} {metric.name} was in line with analysts' expectations at {value}")
        return w.event(co, "neutral", style, year)
    kind = r.choices(
        ["change", "forecast", "negated", "no_longer", "mixed", "swing", "estimates", "event"],
        weights=[36, 14, 6, 2 if label == "negative" else 0, 13, 6, 6, 17],
    )[0]
    if kind in ("change", "forecast", "negated"):
        metric = r.choice(METRICS)
        wanted = label if kind != "negated" else ("negative" if label == "positive" else "positive")
        direction = "up" if label_of(metric, "up") == wanted else "down"
        if kind == "change":
            return w.change(co, metric, direction, style, year)
        return w.forecast(co, metric, direction, style, year, negated=kind == "negated")
    if kind == "no_longer":
        return w.no_longer(co, style, year)
    if kind == "mixed":
        return w.mixed(co, label, style, year)
    if kind == "swing":
        return w.swing(co, label == "positive", style, year)
    if kind == "estimates":
        return w.versus_estimates(co, label == "positive", style, year)
    return w.event(co, label, style, year)


def sentiment_counts(rows: int) -> dict[str, int]:
    """Rows per label for a set of ``rows`` sentences with the sample's class mix (largest remainder)."""
    if rows < len(SENTIMENT_COUNTS):
        raise ValueError(
            f"sentiment rows must be at least {len(SENTIMENT_COUNTS)} (one per label), got {rows}"
        )
    total = sum(SENTIMENT_COUNTS.values())
    exact = {label: rows * count / total for label, count in SENTIMENT_COUNTS.items()}
    counts = {label: int(value) for label, value in exact.items()}
    by_remainder = sorted(exact, key=lambda label: exact[label] - counts[label], reverse=True)
    for label in by_remainder[: rows - sum(counts.values())]:
        counts[label] += 1
    return counts


def build_sentiment(
    w: Writer, counts: dict[str, int] | None = None, exclude: Iterable[str] = ()
) -> list[tuple[str, str, str]]:
    """Labelled sentences, ``counts`` per label (default: the sample's), none inside an ``exclude`` text."""
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    excluded = "\n".join(text.lower() for text in exclude)  # one string: a fast substring search
    for label, count in (counts or SENTIMENT_COUNTS).items():
        made, tries = 0, 0
        while made < count:
            tries += 1
            if tries > 200 * count + 10_000:  # the templates ran out of distinct sentences
                raise ValueError(f"could not write {count} distinct {label} sentences; ask for fewer rows")
            style = "newswire" if w.rng.random() < SOURCE_SHARE_NEWSWIRE else "press_release"
            text = sentiment_sentence(w, label, style)
            if text.lower() in seen or (excluded and text.lower() in excluded):
                continue
            seen.add(text.lower())
            rows.append((text, label, style))
            made += 1
    w.rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Corpus: 1-3 sentence news snippets around one company, never containing a sentiment text
# ---------------------------------------------------------------------------------------------------------
def profile_sentence(w: Writer, co: Company) -> str:
    r = w.rng
    options = [
        f"{co.name} is a {co.nationality} {co.sector} whose main products are {co.product}",
        f"{co.short} has customers in more than {r.randint(5, 60)} countries",
        f"The group's {co.product} business is its largest division",
        f"{co.short} was listed on the {r.choice(EXCHANGES)} stock exchange in {r.randint(1988, 2006)}",
        f"{co.short} operates {r.randint(2, 14)} production plants in {r.choice(REGIONS)}",
        f"The company's head office is in {r.choice(CITIES)}",
        f"{co.short} supplies {co.product} to customers in {r.choice(REGIONS)} and {r.choice(REGIONS)}",
        f"Demand for {co.product} depends largely on {r.choice(DEMAND_SOURCES)}",
        f"{co.short} reports its results in euros",
        f"{w.person()} has been {r.choice(ROLES)} of {co.short} since {r.randint(1998, 2008)}",
        f"The market for {co.product} in {r.choice(REGIONS)} is highly competitive",
        f"{co.short} sells its {co.product} under several brands",
    ]
    return finish(r.choice(options))


def corpus_sentence(w: Writer, co: Company, year: int) -> str:
    r = w.rng
    style = r.choice(["newswire", "press_release"])
    kind = r.choices(
        ["profile", "change", "forecast", "figure", "event", "mixed"], weights=[18, 26, 12, 18, 20, 6]
    )[0]
    if kind == "profile":
        return profile_sentence(w, co)
    if kind == "change":
        return w.change(co, r.choice(METRICS), r.choice(["up", "down"]), style, year)
    if kind == "forecast":
        return w.forecast(
            co, r.choice(METRICS), r.choice(["up", "down"]), style, year, negated=r.random() < 0.1
        )
    if kind == "figure":
        return w.neutral_figure(co, style, year)
    if kind == "mixed":
        return w.mixed(co, r.choice(["positive", "negative"]), style, year)
    return w.event(co, r.choice(["positive", "negative", "neutral", "neutral"]), style, year)


def build_corpus(w: Writer, sentiment_texts: list[str]) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    lowered = [t.lower() for t in sentiment_texts]
    while len(lines) < CORPUS_LINES:
        co, year = w.company(), w.rng.choice(YEARS)
        n = w.rng.choices([1, 2, 3], weights=[35, 40, 25])[0]
        line = " ".join(corpus_sentence(w, co, year) for _ in range(n))
        low = line.lower()
        if not 20 <= len(line) <= 400 or low in seen or any(t in low for t in lowered):
            continue
        seen.add(low)
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------------------
# General English (no finance words): the reference text for measuring forgetting
# ---------------------------------------------------------------------------------------------------------
# fmt: off
G = {
    "town": ["Bristol", "Lisbon", "Kyoto", "Bergen", "Galway", "Seville", "Quebec", "Lucerne", "Porto",
             "Edinburgh", "Salzburg", "Dubrovnik", "Tromso", "Bruges", "Nara", "Cusco"],
    "weather": ["heavy snow", "light rain", "thick fog", "bright sunshine", "strong winds", "a sharp frost",
                "warm drizzle", "a late summer storm", "hail", "a clear cold sky"],
    "weather2": ["clear skies", "milder air", "more showers", "a few sunny spells", "gentle breezes",
                 "thunder in the afternoon", "a dry and bright weekend"],
    "dish": ["vegetable soup", "lemon cake", "mushroom risotto", "apple pie", "fish stew", "tomato sauce",
             "banana bread", "lentil curry", "potato salad", "rhubarb crumble", "onion tart"],
    "herb": ["fresh basil", "a little thyme", "chopped parsley", "black pepper", "a pinch of salt",
             "grated nutmeg", "fresh dill", "rosemary"],
    "side": ["crusty bread", "boiled rice", "a green salad", "roast potatoes", "steamed carrots"],
    "name": ["Emma", "Oliver", "Aino", "Lucas", "Sofia", "Noah", "Mia", "Leo", "Ella", "Hugo", "Ida", "Max"],
    "animal": ["swallows", "cranes", "salmon", "reindeer", "puffins", "frogs", "seals", "wild geese",
               "hedgehogs", "bumblebees", "otters", "red squirrels"],
    "habitat": ["marsh", "river", "meadow", "forest edge", "rocky coast", "old barn", "lake shore"],
    "tree": ["birch", "maple", "oak", "rowan", "beech", "aspen"],
    "color": ["gold", "bright red", "orange", "deep yellow", "copper brown"],
    "sport": ["football", "ice hockey", "basketball", "rowing", "tennis", "cross-country skiing", "volleyball"],
    "team": ["home side", "visiting team", "junior squad", "village club", "women's team", "youth team"],
    "place": ["the river crossing", "the mountain pass", "the old harbour", "the island", "the valley"],
    "century": ["twelfth", "thirteenth", "fifteenth", "sixteenth", "eighteenth"],
    "subject": ["history", "biology", "music", "geography", "art", "physics", "English"],
    "topic": ["a favourite book", "a summer holiday", "the life of bees", "an old map", "the moon",
              "a family recipe", "the seasons"],
    "plant": ["sunflowers", "beans", "tomatoes", "strawberries", "peas", "tulips", "radishes"],
    "instrument": ["violin", "piano", "guitar", "flute", "cello", "drums", "accordion"],
    "transport": ["night train", "ferry", "old tram", "mountain bus", "small boat", "cable car"],
    "sight": ["the cathedral", "the lighthouse", "the botanical garden", "the castle walls",
              "the fish harbour", "the old bridge", "the waterfall"],
    "time": ["at dawn", "in the evening", "after lunch", "just before sunset", "early in the morning",
             "late at night"],
    "n": ["two", "three", "four", "five", "six", "ten", "twelve"],
}
GENERAL_TEMPLATES = [
    "{town} woke up to {weather} this morning, and the forecast promises {weather2} by the weekend.",
    "After a week of {weather}, the people of {town} are hoping for {weather2}.",
    "Stir the {dish} slowly over a low heat and season it with {herb} before serving.",
    "For a quick supper, warm the {dish} and serve it with {side}.",
    "{name} made a {dish} for the whole family and added {herb} at the very end.",
    "My grandmother's {dish} always tasted better with {side} on the side.",
    "Every spring the {animal} return to the {habitat} to raise their young.",
    "We watched the {animal} near the {habitat} {time} without making a sound.",
    "In autumn the {tree} leaves turn {color} before they drop to the ground.",
    "The old {tree} by the {habitat} has stood there for more than a hundred years.",
    "The {team} won the {sport} match after a long and tense second half.",
    "{name} has trained for {sport} {time} every day since the winter holidays.",
    "The {sport} season ends next month, and the {team} still hopes to finish first.",
    "The fortress at {place} was built in the {century} century to guard the road.",
    "Travellers in the {century} century needed {n} days to cross {place} on foot.",
    "Historians believe the village near {place} is older than the {century} century.",
    "Our {subject} teacher asked us to write a short essay about {topic}.",
    "{name} read a long book about {topic} for the {subject} class.",
    "The pupils planted {plant} in the school garden and measured them every week.",
    "{name} practises the {instrument} {time} and hopes to join the school orchestra.",
    "The concert in {town} opened with a quiet piece for {instrument} and ended with a loud march.",
    "We took the {transport} from {town} and arrived {time}, tired but happy.",
    "The {transport} to {sight} leaves every hour in summer but only twice a day in winter.",
    "In {town} we walked to {sight} {time} and watched the light change on the water.",
    "{name} and her brother spent {n} days hiking in the hills above {town}.",
    "The garden is full of {plant} this year, thanks to the {weather} in early summer.",
    "{name} grows {plant} on the balcony and waters them {time}.",
    "The children built a snowman in the park after {weather} covered {town}.",
    "On rainy days, {name} likes to bake a {dish} and listen to the radio.",
    "The museum in {town} has a small room about the history of {sport}.",
]
# fmt: on


def build_general(rng: random.Random) -> list[str]:
    word = re.compile(r"[A-Za-z]+")
    lines: list[str] = []
    seen: set[str] = set()
    while len(lines) < GENERAL_LINES:
        template = rng.choice(GENERAL_TEMPLATES)
        slots = {key: rng.choice(values) for key, values in G.items()}
        line = template.format(**slots)
        line = line[0].upper() + line[1:]
        if line in seen:
            continue
        bad = {t.lower() for t in word.findall(line)} & FINANCE_WORDS
        if bad:
            raise AssertionError(f"general text contains finance words {bad}: {line}")
        seen.add(line)
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------------------
# NER: CoNLL tokens with BIO tags over ORG, MONEY, PERCENT, DATE
# ---------------------------------------------------------------------------------------------------------
Segment = tuple[str | None, str]  # (entity type or None for O, space-separated tokens)


class NerWriter:
    def __init__(self, rng: random.Random, companies: list[Company]):
        self.rng = rng
        self.companies = companies

    def org(self) -> Segment:
        co = self.rng.choice(self.companies)
        return ("ORG", co.name if self.rng.random() < 0.6 else co.short)

    def money(self, kind: str = "money") -> Segment:
        amounts = Amounts(self.rng)
        return ("MONEY", amounts.one(kind))

    def money_pair(self, direction: str) -> tuple[Segment, Segment]:
        old, new, _ = Amounts(self.rng).pair("money", direction)
        return ("MONEY", old), ("MONEY", new)

    def pct(self) -> Segment:
        return ("PERCENT", fmt_pct(self.rng.uniform(0.5, 35.0)))

    def date(self, year: int | None = None) -> list[Segment]:
        """A time expression, with 'the' left outside the entity as in the annotation guide."""
        r = self.rng
        year = year or r.choice(YEARS)
        choice = r.random()
        if choice < 0.25:
            return [("DATE", str(year))]
        if choice < 0.45:
            return [(None, "the"), ("DATE", f"{r.choice(QUARTERS)} quarter of {year}")]
        if choice < 0.55:
            return [(None, "the"), ("DATE", f"{r.choice(['first', 'second'])} half of {year}")]
        if choice < 0.7:
            return [("DATE", f"{r.choice(MONTH_RANGES)} {year}")]
        if choice < 0.8:
            return [("DATE", f"{r.choice(MONTHS)} {year}")]
        if choice < 0.9:
            return [("DATE", f"Q{r.randint(1, 4)} {year}")]
        return [("DATE", a_date(r, year))]

    def sentence(self) -> list[Segment]:
        r = self.rng
        metric = r.choice([m for m in METRICS if m.kind == "money"])
        m = metric.name
        direction = r.choice(["up", "down"])
        verb = verb_for(r, metric, direction)
        old, new = self.money_pair(direction)
        year = r.choice(YEARS)
        nat = [(None, r.choice(NATIONALITIES))] if r.random() < 0.4 else []
        t = r.randrange(22)
        if t == 0:
            return [
                *nat,
                self.org(),
                (None, f"said its {m} {verb} to"),
                new,
                (None, "from"),
                old,
                (None, "in"),
                *self.date(year),
                (None, "."),
            ]
        if t == 1:
            return [
                *nat,
                self.org(),
                (None, f"reports its {m} {verb} to"),
                new,
                (None, "in"),
                ("DATE", str(year)),
                (None, "from"),
                old,
                (None, "in"),
                ("DATE", str(year - 1)),
                (None, "."),
            ]
        if t == 2:
            return [
                (None, f"{capitalize(m)} {verb} by"),
                self.pct(),
                (None, "to"),
                new,
                (None, "in"),
                *self.date(year),
                (None, "."),
            ]
        if t == 3:
            return [
                self.org(),
                (None, "has won an order worth"),
                self.money(),
                (None, "from"),
                self.org(),
                (None, "."),
            ]
        if t == 4:
            return [
                self.org(),
                (None, "will publish its interim report for"),
                *self.date(year),
                (None, "on"),
                ("DATE", a_date(r, year)),
                (None, "."),
            ]
        if t == 5:
            return [
                (None, "Shares in"),
                self.org(),
                (None, r.choice(["fell", "rose", "gained", "lost"])),
                self.pct(),
                (None, "on"),
                ("DATE", r.choice(WEEKDAYS)),
                (None, "."),
            ]
        if t == 6:
            return [
                (None, "In"),
                *self.date(year),
                (None, ","),
                self.org(),
                (None, f"'s {m} totalled"),
                self.money(),
                (None, "."),
            ]
        if t == 7:
            low = r.randint(2, 10)
            return [
                self.org(),
                (None, f"expects its {m} to {verb_for(r, metric, direction, True)} by"),
                ("PERCENT", f"{low}-{low + r.randint(2, 8)} %"),
                (None, "in"),
                ("DATE", str(year)),
                (None, "."),
            ]
        if t == 8:
            return [self.org(), (None, "has acquired"), self.org(), (None, "for"), self.money(), (None, ".")]
        if t == 9:
            return [
                (None, "The board of"),
                self.org(),
                (None, "proposes a dividend of"),
                ("MONEY", f"EUR {r.uniform(0.05, 1.6):.2f}"),
                (None, "per share for"),
                ("DATE", str(year)),
                (None, "."),
            ]
        if t == 10:
            return [
                (None, "Operating margin was"),
                self.pct(),
                (None, "in"),
                *self.date(year),
                (None, ", compared with"),
                self.pct(),
                (None, "a year earlier ."),
            ]
        if t == 11:
            return [
                self.org(),
                (None, f"will cut {r.choice([40, 85, 120, 300])} jobs in"),
                (None, r.choice([c for c in COUNTRIES if " " not in c])),
                (None, "in"),
                ("DATE", str(year)),
                (None, "."),
            ]
        if t == 12:
            return [
                self.org(),
                (None, "and"),
                self.org(),
                (None, "signed a contract worth"),
                self.money(),
                (None, "on"),
                ("DATE", f"{r.randint(1, 28)} {r.choice(MONTHS)}"),
                (None, "."),
            ]
        if t == 13:
            return [(None, "The deal is expected to be completed in"), *self.date(year), (None, ".")]
        if t == 14:
            eps_old, eps_new, _ = Amounts(r).pair("eps", direction)
            return [
                (None, "Earnings per share were"),
                ("MONEY", eps_new),
                (None, "("),
                ("MONEY", eps_old),
                (None, ") in"),
                *self.date(year),
                (None, "."),
            ]
        if t == 15:
            return [
                self.org(),
                (None, "'s market share rose to"),
                self.pct(),
                (None, "in"),
                ("DATE", str(year)),
                (None, "."),
            ]
        if t == 16:
            return [
                (None, "According to"),
                self.org(),
                (None, f", {m} is expected to {verb_for(r, metric, 'down', True)} by"),
                self.pct(),
                (None, "in"),
                ("DATE", str(year)),
                (None, "."),
            ]
        if t == 17:
            return [self.org(), (None, "declined to comment on the report .")]
        if t == 18:
            return [
                self.org(),
                (None, "'s order backlog stood at"),
                self.money(),
                (None, "at the end of"),
                ("DATE", f"{r.choice(MONTHS)} {year}"),
                (None, "."),
            ]
        if t == 19:
            return [
                self.org(),
                (None, "was founded in"),
                ("DATE", str(r.randint(1890, 1999))),
                (None, f"and is headquartered in {r.choice([c for c in CITIES if ' ' not in c])} ."),
            ]
        if t == 20:
            return [
                (None, "Net sales in"),
                ("DATE", f"{r.choice(MONTH_RANGES)} {year}"),
                (None, "amounted to"),
                self.money(),
                (None, ", up"),
                self.pct(),
                (None, "year-on-year ."),
            ]
        return [
            *nat,
            self.org(),
            (None, "said on"),
            ("DATE", r.choice(WEEKDAYS)),
            (None, f"that its {m} {verb} to"),
            new,
            (None, "in"),
            *self.date(year),
            (None, "."),
        ]


def to_tokens(segments: list[Segment]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for kind, text in segments:
        # Punctuation is its own token: split "'s", "(" and "," off their neighbours.
        tokens = re.sub(r"([(),])", r" \1 ", text).replace("'s ", " 's ").split()
        for i, token in enumerate(tokens):
            out.append((token, "O" if kind is None else ("B-" if i == 0 else "I-") + kind))
    return out


def build_ner(nw: NerWriter) -> list[list[tuple[str, str]]]:
    sentences: list[list[tuple[str, str]]] = []
    seen: set[str] = set()
    while len(sentences) < NER_SENTENCES:
        tokens = to_tokens(nw.sentence())
        key = " ".join(t for t, _ in tokens)
        if key in seen:
            continue
        seen.add(key)
        sentences.append(tokens)
    return sentences


# ---------------------------------------------------------------------------------------------------------
# Writing the files
# ---------------------------------------------------------------------------------------------------------
def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def readme_text(corpus, general, rows, ner, seed) -> str:
    labels = Counter(label for _, label, _ in rows)
    sources = Counter(source for _, _, source in rows)
    by_source = Counter((source, label) for _, label, source in rows)
    entities = Counter(tag[2:] for sentence in ner for _, tag in sentence if tag.startswith("B-"))
    total = len(rows)
    mix = "\n".join(
        f"| {label} | {labels[label]} | {100 * labels[label] / total:.1f} % | "
        f"{by_source[('newswire', label)]} | {by_source[('press_release', label)]} |"
        for label in ("neutral", "positive", "negative")
    )
    ent = ", ".join(f"{kind} {entities[kind]}" for kind in ("ORG", "MONEY", "PERCENT", "DATE"))
    tokens = sum(len(s) for s in ner)
    return f"""# Sample data (synthetic)

**Every file in this folder is synthetic.** It was written for this project by `generate.py` (Python
standard library only, seed {seed}); nothing was downloaded or copied from any dataset. Company names,
people, figures and events are invented; any resemblance to a real company is coincidental.

The sentences imitate financial news in the style of the Financial PhraseBank ("Operating profit rose to
EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.") so that recipe defaults tuned on this
sample carry over to a real dataset of that kind. Regenerate (byte-identical for the same seed) with:

```
python data/sample/generate.py            # writes into data/sample/
python data/sample/generate.py --out DIR  # or elsewhere
```

| file | format | size |
|---|---|---|
| `corpus.txt` | unlabelled domain corpus, UTF-8, one document (1-3 sentences) per line | {len(corpus)} lines |
| `general.txt` | general English (weather, cooking, travel, sport, history, nature, school), no finance words; reference text for measuring forgetting | {len(general)} lines |
| `sentiment.csv` | CSV `text,label,source`; label in negative / neutral / positive; `source` (newswire / press_release) is a slice column | {total} rows |
| `ner.conll` | CoNLL, `TOKEN TAG` per line, blank line between sentences, BIO over ORG, MONEY, PERCENT, DATE | {len(ner)} sentences, {tokens} tokens |

## sentiment.csv class mix

| label | rows | share | newswire | press_release |
|---|---|---|---|---|
{mix}

Sources: newswire {sources["newswire"]}, press_release {sources["press_release"]}. No text of this file
occurs in `corpus.txt`.

Labelling rules (from the point of view of an investor in the company named):
- positive: a good metric (sales, profit, orders, margin) goes up or a bad one (loss, costs, debt) goes down
  ("operating loss narrowed"); a loss turns into a profit; results beat estimates; orders won, guidance raised.
- negative: the mirror image; job cuts, plant closures, profit warnings, guidance cut.
- neutral: facts without a direction, including ones with numbers ("net sales totalled EUR 45.2 mn"),
  unchanged figures, report dates, appointments, deals, share-capital changes, "declined to comment".
- forecasts and hedges keep the direction ("expects net sales to decline slightly" is negative); negation
  flips it ("does not expect costs to rise" is positive).
- mixed sentences: the profitability clause decides ("net sales rose, but operating profit fell" is negative).

## ner.conll

Entity mentions: {ent}. `the` before a date stays outside the entity (`the O`, `third B-DATE`,
`quarter I-DATE`, `of I-DATE`, `2007 I-DATE`); money is currency + amount + unit (`EUR B-MONEY`,
`13.1 I-MONEY`, `mn I-MONEY`); percentages keep the sign as a token (`12 B-PERCENT`, `% I-PERCENT`).
Punctuation and the possessive `'s` are tokens of their own.
"""


# Share of flipped labels that go to the adjacent class: annotators of financial news mostly disagree on
# whether a sentence is neutral or polar, rarely on positive vs negative.
POLAR_TO_NEUTRAL_SHARE = 0.9


def add_label_noise(
    rows: list[tuple[str, str, str]], share: float, rng: random.Random
) -> list[tuple[str, str, str]]:
    """Flip the label of ``round(share * len(rows))`` rows chosen at random, like annotator disagreement.

    A flipped positive or negative row becomes neutral (90 %) or the opposite polarity (10 %); a flipped
    neutral row becomes positive or negative in proportion to their sizes in the sample mix.
    """
    if not 0.0 <= share < 0.5:
        raise ValueError(f"label noise must be a share in [0, 0.5), got {share}")
    flipped = list(rows)
    polar_weights = [SENTIMENT_COUNTS["positive"], SENTIMENT_COUNTS["negative"]]
    for index in rng.sample(range(len(rows)), round(share * len(rows))):
        text, label, source = rows[index]
        if label == "neutral":
            new_label = rng.choices(["positive", "negative"], weights=polar_weights)[0]
        elif rng.random() < POLAR_TO_NEUTRAL_SHARE:
            new_label = "neutral"
        else:
            new_label = "negative" if label == "positive" else "positive"
        flipped[index] = (text, new_label, source)
    return flipped


def sentiment_rows(
    rows: int | None = None, seed: int = SEED, label_noise: float = 0.0, exclude: Iterable[str] = ()
) -> list[tuple[str, str, str]]:
    """(text, label, source) rows: the sample's sentiment set, or ``rows`` of them with the same class mix.

    ``label_noise`` flips that share of labels (:func:`add_label_noise`, its own random stream, so the texts
    do not depend on it); no row occurs inside an ``exclude`` text (e.g. a line of the adaptation corpus).
    """
    rng = random.Random(seed)
    writer = Writer(rng, make_companies(rng))
    result = build_sentiment(writer, None if rows is None else sentiment_counts(rows), exclude)
    if label_noise > 0:
        result = add_label_noise(result, label_noise, random.Random(f"label-noise-{seed}"))
    return result


def write_sentiment_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer_csv = csv.writer(handle, lineterminator="\n")
        writer_csv.writerow(["text", "label", "source"])
        writer_csv.writerows(rows)


def write_sentiment(
    path: str | Path,
    rows: int | None = None,
    seed: int = SEED,
    label_noise: float = 0.0,
    exclude: Iterable[str] = (),
) -> dict[str, int]:
    """Write a sentiment CSV (``text,label,source``) of ``rows`` sentences; return the rows per label.

    Same arguments, same bytes. With the defaults the rows are those of the committed ``sentiment.csv``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = sentiment_rows(rows, seed, label_noise, exclude)
    write_sentiment_csv(path, result)
    return dict(Counter(label for _, label, _ in result))


def generate(
    out: Path,
    seed: int = SEED,
    sentiment_size: int | None = None,
    label_noise: float = 0.0,
    only: str | None = None,
) -> dict[str, int]:
    """Write the sample files into ``out``; ``only="sentiment"`` writes just ``sentiment.csv``.

    The defaults reproduce the committed sample byte for byte. More rows or label noise change only the
    sentiment set (the noise has its own random stream); the other files then follow a different stream.
    """
    if only == "sentiment":
        out.mkdir(parents=True, exist_ok=True)
        counts = write_sentiment(out / "sentiment.csv", sentiment_size, seed, label_noise)
        return {"sentiment": sum(counts.values())}
    if only is not None:
        raise ValueError(f"only must be None or 'sentiment', got {only!r}")
    rng = random.Random(seed)
    companies = make_companies(rng)
    writer = Writer(rng, companies)
    counts = None if sentiment_size is None else sentiment_counts(sentiment_size)
    rows = build_sentiment(writer, counts)
    corpus = build_corpus(writer, [text for text, _, _ in rows])
    general = build_general(rng)
    ner = build_ner(NerWriter(rng, companies))
    if label_noise > 0:
        rows = add_label_noise(rows, label_noise, random.Random(f"label-noise-{seed}"))

    out.mkdir(parents=True, exist_ok=True)
    write_lines(out / "corpus.txt", corpus)
    write_lines(out / "general.txt", general)
    write_sentiment_csv(out / "sentiment.csv", rows)
    conll = "\n".join("".join(f"{token} {tag}\n" for token, tag in sentence) for sentence in ner)
    (out / "ner.conll").write_text(conll, encoding="utf-8")
    (out / "README.md").write_text(readme_text(corpus, general, rows, ner, seed), encoding="utf-8")
    return {"corpus": len(corpus), "general": len(general), "sentiment": len(rows), "ner": len(ner)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR, help="output folder")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (default %(default)s)")
    parser.add_argument(
        "--sentiment-rows",
        type=int,
        default=None,
        help="rows of sentiment.csv, same class mix as the sample (default: the sample's 1005)",
    )
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="share of sentiment labels flipped to another class, like annotator disagreement (default 0)",
    )
    parser.add_argument("--only", choices=["sentiment"], default=None, help="write only this file")
    args = parser.parse_args()
    changed = args.sentiment_rows is not None or args.label_noise > 0 or args.only is not None
    if changed and args.out.resolve() == SAMPLE_DIR:
        parser.error(
            "--sentiment-rows, --label-noise and --only would overwrite the committed sample: add --out DIR"
        )
    try:
        counts = generate(args.out, args.seed, args.sentiment_rows, args.label_noise, args.only)
    except ValueError as exc:
        parser.error(str(exc))
    print(" ".join(f"{name}={count}" for name, count in counts.items()), f"-> {args.out}")


if __name__ == "__main__":
    main()
