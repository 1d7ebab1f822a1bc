"""Write the shipped text pools ``data/pools/toyworld.csv`` and ``data/pools/general.csv``.

Both are composed from vocabularies x templates, deterministically: rerunning
``python scripts/build_pools.py [OUT_DIR]`` (default: the shipped ``data/pools``)
rewrites byte-identical files. The property tag of every row is the vocabulary
it came from.

- toyworld: several phrasings of every toy-world attribute value; each
  description names exactly one attribute (the value words are disjoint
  across attributes, see ``precompute.toyworld.captions``).
- general: short descriptions of natural images in the style of TEXTSPAN's
  ``image_descriptions_general`` ("image with a vibrant color", "photo taken
  in Paris"), for real CLIP models.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path

from precompute.pools import POOLS_DIR, normalise
from precompute.store import write_bytes_atomic
from precompute.toyworld.captions import ATTRIBUTES, plural

TOY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a {v}", "a {v} shape", "an image of a {v}", "a photo of a {v}", "something shaped like a {v}",
              "{vs}", "an image with {vs}", "a picture of {vs}", "the outline of a {v}"),
    "color": ("a {v} object", "something {v}", "an image with {v} shapes", "a {v} thing", "objects painted {v}",
              "the color {v}", "a photo of a {v} object", "{v} shapes", "a {v} colored object"),
    "position": ("an object at the {v}", "something at the {v}", "a shape at the {v}", "objects placed at the {v}",
                 "an image with something at the {v}", "located at the {v}", "the {v} of the image",
                 "a photo of an object at the {v}", "things in the {v} area"),
    "size": ("a {v} object", "something {v}", "{v} shapes", "a {v} thing", "an image with {v} objects",
             "a photo of a {v} object", "objects of {v} size", "a {v} shape", "{v} things", "a picture of {v} objects",
             "an image of something {v}", "a {v} item", "{v} figures", "a {v} symbol"),
    "count": ("{v} {o}", "an image with {v} {o}", "a photo of {v} {o}", "exactly {v} {o}", "{v} {t}",
              "a picture showing {v} {o}", "{v} copies of a shape", "a group of {v} {o}", "{v} {f}"),
    "pattern": ("a {v} background", "a {v} pattern", "something on a {v} background", "a {v} backdrop",
                "an image with a {v} background", "a photo of a {v} background", "a {v} texture behind the objects",
                "the background is {v}"),
    "background": ("a {v} background", "on {v}", "an image with a {v} background", "a {v} backdrop",
                   "something on a {v} background", "the background is {v}", "a photo of a {v} background",
                   "a {v} canvas"),
}


def toyworld_rows() -> list[tuple[str, str]]:
    """(text, property) for every toy-world attribute value x phrasing."""
    rows = []
    for attribute, templates in TOY_TEMPLATES.items():
        for value in ATTRIBUTES[attribute]:
            one = value == "one"
            for template in templates:
                text = template.format(v=value, vs=plural(value), o="object" if one else "objects",
                                       t="thing" if one else "things", f="figure" if one else "figures")
                if one and template == "{v} copies of a shape":
                    text = "one single shape"
                if one and template == "a group of {v} {o}":
                    text = "just one object"
                rows.append((_articles(text), attribute))
    return rows


# property -> (words separated by ';', templates with {}). Words are plain English; the a/an fix is applied after.
GENERAL: dict[str, tuple[str, tuple[str, ...]]] = {
    "colors": (
        "red; crimson; scarlet; maroon; burgundy; orange; amber; peach; yellow; golden yellow; mustard; lime green; "
        "olive green; emerald green; forest green; mint green; teal; turquoise; cyan; sky blue; navy blue; cobalt blue; "
        "indigo; violet; purple; lavender; magenta; hot pink; pastel pink; beige; tan; brown; black; charcoal gray; "
        "silver; white; ivory; cream",
        ("image with a {} color", "a photo dominated by {}", "an image with {} tones", "a picture in shades of {}"),
    ),
    "locations": (
        "Paris; London; New York; Tokyo; Rome; Venice; Barcelona; Istanbul; Cairo; Dubai; Mumbai; Beijing; Hong Kong; "
        "Sydney; Rio de Janeiro; Mexico City; San Francisco; Los Angeles; Chicago; Moscow; Berlin; Amsterdam; Prague; "
        "Vienna; Athens; Bangkok; Singapore; Seoul; Cape Town; Nairobi; Buenos Aires; Havana; Kyoto; Lisbon; Dublin; "
        "Iceland; the Sahara; the Alps; the Himalayas; the Amazon",
        ("photo taken in {}", "an image from {}", "a street scene in {}", "a travel photo of {}"),
    ),
    "animals": (
        "cat; dog; horse; cow; sheep; goat; pig; rabbit; mouse; squirrel; fox; wolf; bear; deer; moose; lion; tiger; "
        "leopard; cheetah; elephant; giraffe; zebra; rhinoceros; hippopotamus; kangaroo; koala; panda; monkey; gorilla; "
        "camel; owl; eagle; parrot; penguin; flamingo; swan; duck; frog; turtle; snake; lizard; crocodile; shark; "
        "dolphin; whale; octopus; jellyfish; butterfly; bee; spider",
        ("an image of a {}", "a photo of a {} in the wild", "a close-up of a {}"),
    ),
    "textures": (
        "rough; smooth; fluffy; furry; scaly; bumpy; grainy; glossy; matte; wrinkled; cracked; rippled; woven; knitted; "
        "spiky; velvety; silky; coarse; porous; speckled; mottled; striped; polka-dotted; checkered; marbled; "
        "corrugated; quilted; sandy; slimy; crumpled; ribbed; embossed; frosted; feathery; leathery",
        ("a photo with a {} texture", "a close-up of a {} surface", "an image of something {}", "a {} pattern"),
    ),
    "shapes": (
        "circle; square; triangle; rectangle; oval; hexagon; pentagon; octagon; star; heart; diamond; crescent; "
        "spiral; cross; arrow; ring; cube; sphere; cylinder; cone; pyramid; zigzag; wave; grid; arch; dome; "
        "trapezoid; rhombus; helix; teardrop",
        ("an image with a {} shape", "a photo of a {}", "an object shaped like a {}", "a pattern of {} shapes"),
    ),
    "objects": (
        "chair; table; lamp; clock; bottle; cup; mug; vase; book; pencil; laptop; phone; camera; television; "
        "umbrella; backpack; suitcase; key; scissors; hammer; bicycle helmet; guitar; teapot; candle; mirror; "
        "pillow; basket; bucket; ladder; wallet; watch; spoon; fork; knife; plate; bowl; kettle; remote control; "
        "toothbrush; teddy bear",
        ("an image of a {}", "a photo of a {} on a table", "a close-up of a {}"),
    ),
    "materials": (
        "wood; metal; steel; copper; brass; gold; silver metal; glass; plastic; rubber; leather; cotton; wool; silk; "
        "denim; linen; paper; cardboard; stone; marble; granite; concrete; brick; clay; ceramic; porcelain; "
        "bamboo; cork; wicker; velvet; ice; wax",
        ("something made of {}", "a photo of a {} surface", "an object made from {}", "an image of {} material"),
    ),
    "lighting": (
        "soft light; harsh light; golden hour light; backlight; candlelight; neon light; moonlight; sunlight; "
        "dim light; bright light; studio light; natural light; artificial light; warm light; cold light; "
        "dappled light; spotlight; firelight; rim light; low light; diffused light; overhead light; side light; "
        "fluorescent light; streetlight; flash light; window light; blue light; red light; twilight glow",
        ("a photo lit by {}", "an image with {}", "a scene in {}", "a portrait with {}"),
    ),
    "weather": (
        "rain; heavy rain; drizzle; snow; a snowstorm; fog; mist; hail; a thunderstorm; lightning; a rainbow; "
        "clear skies; cloudy skies; overcast skies; strong wind; a tornado; a hurricane; a sandstorm; frost; "
        "a heatwave; sleet; dark storm clouds; a blizzard; sunshine; humid air; a dust storm; freezing rain; "
        "morning dew; thick haze; light snow",
        ("a photo taken in {}", "an image of {}", "a landscape in {}", "a city street in {}"),
    ),
    "seasons": (
        "spring; early spring; late spring; summer; early summer; late summer; midsummer; autumn; early autumn; "
        "late autumn; fall; winter; early winter; late winter; midwinter; the rainy season; the dry season; "
        "the monsoon season; the holiday season; the harvest season",
        ("a photo taken in {}", "an image of a park in {}", "a landscape in {}", "a forest in {}", "a garden in {}",
         "a village in {}", "trees in {}"),
    ),
    "time_of_day": (
        "dawn; sunrise; early morning; morning; late morning; noon; midday; early afternoon; afternoon; "
        "late afternoon; evening; sunset; dusk; twilight; nightfall; night; midnight; late night; "
        "the blue hour; the golden hour",
        ("a photo taken at {}", "an image of a city at {}", "a landscape at {}", "a beach at {}", "a street at {}",
         "the sky at {}", "a harbor at {}"),
    ),
    "art_style": (
        "watercolor; oil painting; pencil sketch; charcoal drawing; ink drawing; pastel drawing; cartoon; anime; "
        "comic book art; pixel art; low poly art; impressionism; expressionism; cubism; surrealism; pop art; "
        "art nouveau; art deco; baroque painting; renaissance painting; minimalism; abstract art; graffiti; "
        "ukiyo-e; mosaic; stained glass; collage; vector illustration; 3D render; claymation",
        ("an image in the style of {}", "a landscape in {} style", "a portrait in {} style", "artwork in {} style"),
    ),
    "photography": (
        "long exposure; shallow depth of field; macro; wide angle; fisheye; tilt-shift; black and white; sepia; "
        "high contrast; low contrast; overexposure; underexposure; motion blur; bokeh; panorama; aerial view; "
        "bird's eye view; worm's eye view; close-up; silhouette; double exposure; infrared; HDR; film grain; "
        "lens flare; vignette; selfie; time-lapse; soft focus; symmetric composition",
        ("a photo with {}", "an image shot with {}", "a picture using {}", "a landscape photo with {}"),
    ),
    "emotions": (
        "happy; sad; angry; surprised; scared; disgusted; calm; excited; bored; confused; proud; embarrassed; "
        "lonely; hopeful; nervous; relaxed; joyful; grieving; curious; determined; tired; playful; shy; "
        "loving; jealous; frustrated; amazed; peaceful; anxious; cheerful",
        ("a photo of a {} person", "an image of a {} face", "a {} child", "a {} crowd", "a portrait of someone {}"),
    ),
    "people": (
        "firefighter; police officer; doctor; nurse; teacher; chef; farmer; soldier; pilot; astronaut; scientist; "
        "engineer; construction worker; mechanic; carpenter; painter; musician; singer; dancer; athlete; "
        "photographer; journalist; lawyer; judge; priest; monk; waiter; barista; fisherman; lifeguard; "
        "surgeon; librarian; postman; clown; magician",
        ("an image of a {}", "a photo of a {} at work", "a portrait of a {}", "a {} in uniform"),
    ),
    "clothing": (
        "t-shirt; dress; suit; tuxedo; jeans; shorts; skirt; hoodie; sweater; jacket; raincoat; fur coat; scarf; "
        "hat; baseball cap; beanie; sunglasses; gloves; boots; sneakers; high heels; sandals; tie; bow tie; "
        "uniform; kimono; sari; apron; swimsuit; pajamas; wedding dress; leather jacket",
        ("a person wearing a {}", "an image of a {}", "a photo of someone in a {}", "a model wearing a {}"),
    ),
    "food": (
        "pizza; burger; hot dog; sandwich; salad; soup; pasta; spaghetti; sushi; ramen; curry; rice; bread; "
        "croissant; pancakes; waffles; cake; cupcake; donut; cookie; ice cream; chocolate; cheese; apple; "
        "banana; orange fruit; strawberry; grapes; watermelon; pineapple; tacos; dumplings; steak; fried chicken; "
        "french fries; eggs",
        ("a photo of {}", "an image of a plate of {}", "a close-up of {}", "{} on a table"),
    ),
    "vehicles": (
        "car; sports car; taxi; bus; school bus; truck; fire truck; ambulance; police car; van; motorcycle; "
        "scooter; bicycle; tractor; train; steam locomotive; tram; subway train; airplane; helicopter; "
        "hot air balloon; sailboat; speedboat; ship; cruise ship; canoe; submarine; rocket; skateboard; limousine",
        ("an image of a {}", "a photo of a {} on the road", "a picture of an old {}", "a {} in motion"),
    ),
    "text": (
        "the letter A; the letter B; the letter C; the letter E; the letter K; the letter M; the letter R; "
        "the letter S; the letter T; the letter X; the letter Z; the word stop; the word love; the word exit; "
        "the word open; the word sale; a handwritten note; a street sign; a neon sign; a billboard; "
        "a newspaper headline; a book page; a menu; a license plate; a logo; graffiti lettering; "
        "calligraphy; a typewriter font; bold capital letters; cursive handwriting; numbers",
        ("an image with {}", "a photo of {} written on a wall", "a close-up of {}", "a sign showing {}"),
    ),
    "counting": (
        "one; two; three; four; five; six; seven; eight; nine; ten; a dozen; a pair of; a few; several; many; "
        "a hundred; a single; a couple of; countless; dozens of",
        ("an image of {} apples", "a photo with {} people", "{} birds on a wire", "an image with {} cars",
         "{} dogs in a park", "a picture of {} chairs", "{} flowers in a vase"),
    ),
    "nature": (
        "mountain; valley; canyon; waterfall; river; lake; ocean; beach; desert; forest; jungle; meadow; prairie; "
        "glacier; volcano; cave; cliff; island; swamp; coral reef; sand dunes; hills; rainforest; tundra; "
        "savanna; fjord; lagoon; pond; stream; rocky shore",
        ("a photo of a {}", "an image of a {} landscape", "a view of a {}", "a painting of a {}"),
    ),
    "plants": (
        "rose; tulip; sunflower; daisy; lily; orchid; lotus; cherry blossom; lavender plant; cactus; fern; moss; "
        "bamboo plant; palm tree; oak tree; pine tree; maple tree; willow tree; birch tree; bonsai tree; ivy; "
        "grass; wheat; corn field; mushroom; succulent; dandelion; poppy; hibiscus; vine",
        ("an image of a {}", "a photo of a {} in bloom", "a close-up of a {}", "a garden with a {}"),
    ),
    "sports": (
        "soccer; basketball; tennis; baseball; golf; swimming; surfing; skiing; snowboarding; ice hockey; "
        "boxing; wrestling; cycling; running; marathon; gymnastics; volleyball; rugby; cricket; skateboarding; "
        "rock climbing; fencing; archery; rowing; horse riding; table tennis; badminton; karate; yoga; bowling",
        ("a photo of people playing {}", "an image of {}", "a scene from a {} match", "an athlete doing {}"),
    ),
    "architecture": (
        "skyscraper; cathedral; church; mosque; temple; pagoda; castle; palace; lighthouse; bridge; tower; "
        "farmhouse; cottage; log cabin; igloo; tent; apartment block; office building; stadium; museum; "
        "train station; airport terminal; windmill; barn; greenhouse; ruins; pyramid tomb; gothic arch; "
        "wooden house; glass facade",
        ("an image of a {}", "a photo of a {} at night", "the facade of a {}", "an old {}"),
    ),
    "music": (
        "piano; violin; cello; guitarist; drum kit; trumpet; saxophone; flute; harp; accordion; banjo; ukulele; "
        "microphone; orchestra; rock concert; jazz band; choir; DJ booth; vinyl record; headphones; "
        "sheet music; music festival; street musician; opera singer; string quartet; marching band; "
        "electric guitar; harmonica; xylophone; tambourine",
        ("an image of a {}", "a photo of a {} on stage", "a close-up of a {}", "a picture showing a {}"),
    ),
}


def _articles(text: str) -> str:
    """'a apple' -> 'an apple' (a vowel-letter rule; the vocabularies avoid its exceptions)."""
    return re.sub(r"\b([Aa]) (?!uni|uku|eu|one\b)([aeiouAEIOU])", r"\1n \2", text)


def general_rows() -> list[tuple[str, str]]:
    """(text, property): every word of every property in every one of its templates."""
    rows = []
    for prop, (words, templates) in GENERAL.items():
        for word in (w.strip() for w in words.split(";")):
            for template in templates:
                rows.append((_articles(template.format(word)), prop))
    return rows


def dedupe(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep the first of rows whose texts equal ignoring case and spacing."""
    seen, out = set(), []
    for text, prop in rows:
        key = normalise(text)
        if key not in seen:
            seen.add(key)
            out.append((text, prop))
    return out


def to_csv(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "property"])
    writer.writerows(rows)
    return buf.getvalue()


def build(out_dir: Path = POOLS_DIR) -> list[Path]:
    """Write both pools; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("toyworld", toyworld_rows()), ("general", general_rows())):
        path = out_dir / f"{name}.csv"
        write_bytes_atomic(path, to_csv(dedupe(rows)).encode("utf-8"))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in build(Path(sys.argv[1]) if len(sys.argv) > 1 else POOLS_DIR):
        print(p)
