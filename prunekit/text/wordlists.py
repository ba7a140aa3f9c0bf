"""The word lists of the rule tagger (data only, lower-case).

:mod:`prunekit.text.tagger` gives each word of a prompt a lexical class by
looking it up here: closed classes first (determiners, pronouns, prepositions,
auxiliaries, ...), then open-class hints for VQA and instruction prompts
(adjectives, verbs, position words, instruction verbs and nouns) and the
exceptions to its suffix rules ("ceiling" is a noun, not an -ing verb).
:data:`STOPWORDS` are the words a prompt's content words never include. Adding a
word to a list changes what the extractors return.
"""

from __future__ import annotations

__all__ = [
    "ABLE_NOUNS",
    "ADJECTIVES",
    "ADVERBS",
    "AMBIG_ADJ",
    "AMBIG_NOUN",
    "AMBIG_NOUN_COMPOUNDS",
    "CAN_NOUN_MODIFIERS",
    "COLORS",
    "CONJUNCTIONS",
    "COPULAS",
    "DEMONSTRATIVES",
    "DETERMINERS",
    "DO_MODALS",
    "ED_NOUNS",
    "EST_NOUNS",
    "EXISTENTIAL",
    "FIXED_COMPOUNDS",
    "FUL_NOUNS",
    "INFINITIVE_TO",
    "ING_COMPOUND",
    "ING_NOUNS",
    "INSTR_AMBIG",
    "INSTR_PURE",
    "IRREGULAR_PAST",
    "LINKING_VERBS",
    "LY_NOUNS",
    "META_NOUNS",
    "NEGATIONS",
    "NOUN_OVERRIDES",
    "NUMBER_WORDS",
    "OTHER_AUX",
    "POSITIONS",
    "PREPOSITIONS",
    "PRONOUNS",
    "QUANTITY_NOUNS",
    "STOPWORDS",
    "VERBS",
    "WH_DETERMINERS",
    "WH_WORDS",
]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Determiners and possessive determiners: a noun follows them.
DETERMINERS = _words(
    "a an the this that these those each every some any no another such all both either "
    "neither my your his her its our their thy whatever whichever"
)
#: Demonstratives: a lexicon verb right after one stays a verb in a do-question
#: ("does this look like ...").
DEMONSTRATIVES = _words("this that these those")
#: Question words that can open a noun phrase ("what colour").
WH_DETERMINERS = _words("what which whose")
#: Other question words.
WH_WORDS = _words("who whom where when why how whence wherever whenever however")
#: Personal, reflexive and indefinite pronouns.
PRONOUNS = _words(
    "i me myself mine you yourself yourselves yours he him himself she herself hers it itself "
    "we us ourselves ours they them themselves theirs one's someone somebody something "
    "anyone anybody anything everyone everybody everything nobody nothing none noone "
    "ones others oneself thee thou ye whoever whomever"
)
#: Prepositions: a noun phrase follows them.
PREPOSITIONS = _words(
    "about above across after against along alongside amid amidst among amongst around as at "
    "atop before behind below beneath beside besides between beyond by despite down during "
    "except for from in inside into like near nearer nearest of off on onto opposite out "
    "outside over past per since than through throughout till toward towards under underneath "
    "unlike until up upon via with within without versus vs underneath aboard via"
)
#: The word "to", a class of its own (preposition or infinitive marker).
INFINITIVE_TO = "to"
#: Conjunctions.
CONJUNCTIONS = _words(
    "and or but nor so yet if because while although though whether unless whereas then "
    "also plus either neither both"
)
#: Forms of "be" (with contractions).
COPULAS = _words("is are was were am be isn't aren't wasn't weren't 's 're 'm ain't")
#: Do-auxiliaries and modals ("can" is also a noun: "a trash can").
DO_MODALS = _words(
    "do does did can could will would shall should may might must don't doesn't didn't "
    "can't cannot couldn't won't wouldn't shan't shouldn't mayn't mightn't mustn't "
    "'ll 'd ought"
)
#: Other auxiliaries (have, been, let, ...).
OTHER_AUX = _words(
    "been being have has had having haven't hasn't hadn't 've doing done let let's gonna "
    "wanna got gotten"
)
#: Negations.
NEGATIONS = _words("not n't never")
#: Existential "there" / "here".
EXISTENTIAL = _words("there here there's here's")
#: Number words, ordinals and quantifiers.
NUMBER_WORDS = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred hundreds thousand thousands million millions billion dozen dozens "
    "first second third fourth fifth sixth seventh eighth ninth tenth once twice thrice half "
    "many much more most few fewer fewest less least several multiple numerous enough "
    "single double triple"
)
#: General adverbs / discourse words never used as nouns or content words.
ADVERBS = _words(
    "very too also just only still even really here there now then always never often "
    "sometimes again almost quite rather so well away together else ever yet already maybe "
    "perhaps probably likely unlikely actually currently mostly exactly approximately roughly "
    "instead otherwise however therefore thus hence please kindly yes no not ok okay nope yeah "
    "yep sure thanks thank hello hi hey indoors outdoors inside outside upstairs downstairs "
    "somewhere anywhere everywhere nowhere elsewhere apart aside ahead back forward forwards "
    "backward backwards overall generally usually typically especially particularly "
    "specifically briefly shortly clearly simply etc ie eg i.e e.g best better worst worse "
    "abroad alone ago anyway anyhow somehow much lot least last next"
)
#: Positional words: in VQA prompts they name a location, not an object.
POSITIONS = _words(
    "left right top bottom front middle center centre side sides upper lower leftmost "
    "rightmost topmost uppermost bottommost lowermost inner outer rear central far near "
    "nearby closer farther further furthest farthest distant upside downside up down "
    "foremost hindmost backside underside midst"
)
#: Instruction / perception verbs typical of VQA prompts, never nouns (class ``IVERB``).
INSTR_PURE = _words(
    "describe describes described describing explain explains explained explaining identify "
    "identifies identified identifying determine determines determined summarize summarise "
    "summarizes summarises summarized specify specifies specified mention mentions mentioned "
    "provide provides provided providing tell tells telling told see sees seeing saw seen "
    "depict depicts depicted depicting shown showing pictured portrayed portray portrays "
    "think thinks thought know knows knew known imagine suppose infer consider notice "
    "noticed observe observed analyze analyse analyzes analyses elaborate discuss explain "
    "respond replying reply replies write writes writing written wrote give gives giving "
    "given gave locate locates located find finds found visible appear appears appeared "
    "seem seems seemed please using"
)
#: Instruction verbs that are nouns in a noun slot ("the name of the street").
INSTR_AMBIG = _words(
    "show shows look looks name names list lists count counts answer guess choose select pick"
)
#: Generic "meta" nouns of instructions; never returned as nouns or content words.
META_NOUNS = _words(
    "question questions answer answers option options choice choices hint hints context "
    "word words phrase phrases sentence sentences detail details description descriptions "
    "response responses explanation explanations kind kinds type types sort sorts lot lots "
    "bit thing things way ways following instruction instructions prompt task request "
    "format example examples stuff information info"
)
#: Quantity nouns that are not the object when followed by "of" ("a bunch of bananas").
QUANTITY_NOUNS = _words(
    "couple pair bunch group lot lots variety number amount plenty majority piece pieces set total"
)

#: Colour words, all adjectives (colours that are also nouns, "orange", are in
#: :data:`AMBIG_ADJ`).
COLORS = _words(
    "red blue green yellow purple pink brown black white gray grey beige tan teal maroon "
    "magenta cyan blonde blond brunette auburn golden colorful colourful multicolor "
    "multicolour reddish bluish blueish greenish yellowish brownish pinkish purplish "
    "orangish orangey whitish blackish grayish greyish dark pale bright neon pastel "
    "transparent translucent opaque metallic matte monochrome sepia colored coloured"
)
#: Adjectives: colours, sizes, shapes, qualities, states, weather (class ``ADJ``).
ADJECTIVES = COLORS | _words(
    # size / shape
    "big small large little tiny huge giant enormous massive tall short long wide narrow "
    "thick thin fat skinny slim high low deep shallow heavy mini petite full empty round "
    "circular rectangular triangular flat curved straight pointy pointed spherical "
    "cylindrical cubic oblong hexagonal square-shaped steep tight loose "
    # qualities / states
    "good bad great nice fine beautiful pretty ugly cute lovely happy sad angry scared afraid "
    "calm quiet loud noisy busy crowded old new young modern ancient antique vintage fresh "
    "rotten ripe unripe raw cooked hot cold warm cool wet dry clean dirty messy tidy neat soft "
    "hard smooth rough sharp dull sweet sour bitter salty spicy tasty delicious healthy "
    "unhealthy safe unsafe real fake natural artificial wild domestic tame elderly open "
    "closed broken wooden woolen woollen golden electric electronic digital analog analogue "
    "manual automatic professional amateur formal casual simple complex plain fancy rich "
    "poor famous popular common rare unusual strange weird odd funny serious sunny cloudy "
    "rainy snowy windy foggy stormy overcast hazy misty dim visible invisible possible "
    "impossible available same different similar main whole entire various certain true "
    "false correct wrong able unable alive dead asleep awake ready free hungry thirsty "
    "tired sick ill pregnant bald naked barefoot shirtless curly wavy furry fluffy hairy "
    "fuzzy leafy grassy sandy rocky muddy dusty icy frozen shiny glossy sunlit interesting "
    "important potential appropriate suitable relevant specific particular general visual "
    "notable noticeable prominent distinctive unique special typical usual normal regular "
    "organic vegetarian vegan indoor outdoor urban rural public private commercial "
    "residential industrial historic historical traditional cultural political social "
    "strong weak fast slow quick early late recent current previous final daily weekly "
    "wireless cordless upright sideways diagonal vertical horizontal parallel "
    "crooked abandoned asleep awake ajar lit unlit alert sleepy dangerous curious "
    "nervous anxious excited bored lonely friendly busy lazy tiny total extra "
    "other own such proper present absent blurry blurred sharp crisp dense sparse "
    "solid hollow striped spotted checkered patterned floral plaid polka "
    "black-and-white dotted shallow fluffy furry soggy crispy crunchy juicy greasy "
    "creamy cheesy chocolaty frosted iced sliced chopped grilled fried baked roasted "
    "steamed boiled toasted stuffed unknown known handmade homemade close"
)
#: Words that are adjectives before a noun or in a predicate, but nouns at the head of a
#: noun phrase: "the orange" / "an orange shirt" / "the car is orange".
AMBIG_ADJ = _words(
    "orange gold silver bronze copper cream ivory lime navy olive peach plum rose salmon "
    "coral turquoise lavender violet mint khaki square oval adult male female senior "
    "junior medium"
)
#: Noun-primary words that also modify nouns: "the key" / "a key chain", "the light" /
#: "light blue".
AMBIG_NOUN = _words("light key remote")
#: Nouns that make a compound with an ambiguous head ("traffic light red" -> light).
AMBIG_NOUN_COMPOUNDS = {
    "light": _words(
        "traffic street tail head brake ceiling stop flash sun day moon candle lamp desk "
        "night porch spot flood signal fairy christmas string led neon"
    ),
    "key": _words("car house door computer piano keyboard"),
    "remote": _words("tv television game wii"),
}
#: Adjectives that form a fixed compound noun with the next word.
FIXED_COMPOUNDS = {
    "hot": _words("dog dogs tub tubs sauce"),
    "high": _words("chair chairs heels"),
    "white": _words("board boards"),
    "black": _words("board boards"),
}
#: Nouns before "can" that make it a noun ("a trash can").
CAN_NOUN_MODIFIERS = _words(
    "trash garbage soda beer paint tin watering oil spray soup coke pop aluminum aluminium "
    "metal food drink milk water gas"
)

#: Open-class verbs frequent in VQA prompts (base forms; inflections are derived).
VERBS = _words(
    "accept add allow appear arrive ask attach attack bake bark bathe bend bite blow boil "
    "bounce break breathe bring brush build burn buy call carry catch cause celebrate change "
    "charge chase check chew climb collect come compete connect contain cook cover crawl "
    "cross cry cut dance decide decorate deliver die dig dive divide drag draw dress drink "
    "drive drop eat enjoy enter escape exist face fall feed feel fetch fight fill finish fit "
    "fix float fly fold follow get go grab graze greet grill grow guard happen hate hear "
    "help hide hit hold hop hug hunt hurt include indicate intend jump keep kick kill kiss "
    "kneel knit land laugh lay lead lean learn leave let lick lie lift listen live load lock "
    "lose love make mean measure meet melt mix move need offer own pack paint pass pay "
    "perform play point pose pour practice prepare press prevent protect pull push put "
    "race rain reach read relax remain remove repair represent rest return ride rise roll "
    "run rush sail say score scratch sell send serve set sew shake share shine shoot shop "
    "sing sit skate ski sleep slice slide smell smile smoke sniff snow speak spend spin "
    "splash spray stand stare start stay steal step stir stop stretch suggest support surf "
    "surround swim swing take talk taste teach tend throw tie touch travel try turn "
    "understand use visit wait wake walk want wash watch wave wear win work worry wrap "
    "yell zoom belong cost weigh hang stick sunbathe perch"
)
#: Irregular past tenses and participles (class ``VED``).
IRREGULAR_PAST = _words(
    "made held worn wore sat stood ate eaten drank drunk rode ridden flew flown hung laid "
    "lain cut put hit set shut built bought brought caught taught found paid said sold "
    "kept slept swept felt meant sent spent lent bent lost shot fought got gotten went gone "
    "came done did ran began begun sang sung swam swum drew drawn grew grown threw thrown "
    "blew blown broke broken chose chosen drove driven froze frozen hid hidden spoke spoken "
    "stole stolen woke woken wrote written bitten fell fallen forgot forgotten shook shaken "
    "took taken stuck struck dug won spun swung lit heard met fled led fed understood "
    "spread sewn shown taken begun become became"
)
#: -ing words that are nouns (never verb forms in VQA prompts).
ING_NOUNS = _words(
    "building buildings ceiling clothing painting drawing thing king ring wing string spring "
    "morning evening wedding pudding sibling dumpling railing awning frosting icing topping "
    "stuffing bedding siding ceiling sapling duckling seedling gosling earring lightning "
    "housing pudding ping ding swing sling bling viking darling offspring icing dressing "
    "stocking stockings shilling herring fencing netting plumbing flooring shelving "
    "roofing paneling tubing piping"
)
#: -ing words that commonly head a compound noun ("dining table", "parking meter").
ING_COMPOUND = _words(
    "dining parking living swimming cutting washing sewing baking shopping surfing skiing "
    "skating fishing frying boxing bowling camping cooking hiking climbing racing wrapping "
    "ironing mixing rolling changing waiting dressing packing shipping riding reading "
    "writing sailing diving dancing training "
    "hearing filling landing"
)
#: Nouns ending in -ly (not adverbs).
LY_NOUNS = _words(
    "family belly jelly bully lily rally tally gully folly butterfly dragonfly firefly "
    "housefly horsefly assembly anomaly monopoly italy july supply reply trolly dolly holly "
    "filly polly sally molly ally fly grizzly mayfly gadfly emily kelly billy"
)
#: Nouns ending in -ed (not participles).
ED_NOUNS = _words(
    "hundred sled shed bed seed weed reed steed breed tweed speed feed seabed flowerbed "
    "riverbed hotbed sickbed waterbed sunbed bobsled woodshed toolshed watershed cowshed"
)
#: Nouns ending in -est (not superlatives).
EST_NOUNS = _words(
    "forest harvest interest contest request protest chest guest nest vest west test crest "
    "pest quest priest everest conquest inquest breast southwest northwest midwest"
)
#: Nouns ending in -ful (not adjectives).
FUL_NOUNS = _words("handful spoonful mouthful cupful armful bucketful")
#: Nouns ending in -able (not adjectives).
ABLE_NOUNS = _words("vegetable vegetables timetable turntable worktable constable syllable")
#: Verbs that take a predicate adjective ("does the cat look comfortable").
LINKING_VERBS = _words(
    "look looks seem seems appear appears feel feels taste tastes smell smells sound sounds "
    "become becomes"
)
#: Comparative-looking nouns ("hair dryer").
NOUN_OVERRIDES = _words("dryer drier dryers driers cooler coolers cleaner cleaners warmer warmers")

#: Words never returned by :meth:`~prunekit.text.base.NounExtractor.content_words`
#: (function words and instruction noise).
STOPWORDS = (
    DETERMINERS
    | WH_DETERMINERS
    | WH_WORDS
    | PRONOUNS
    | PREPOSITIONS
    | {INFINITIVE_TO}
    | CONJUNCTIONS
    | COPULAS
    | DO_MODALS
    | OTHER_AUX
    | NEGATIONS
    | EXISTENTIAL
    | NUMBER_WORDS
    | ADVERBS
    | INSTR_PURE
    | INSTR_AMBIG
    | META_NOUNS
)
