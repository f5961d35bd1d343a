#!/bin/bash
# Each recipe change, the other seeds, their ensemble, base and base cut to 4 layers against the shipped tiny recipe, speaker by speaker, on the
# same held-out calls (callmon bench compare: paired bootstrap over speakers). From the
# repository root: bash docs/results/compare_recipes.sh. Then each against the three seeds of the
# shipped recipe (their mean; the bootstrap resamples the seeds too).
set -euo pipefail
R=docs/results
{
  echo "# Recipes against the shipped tiny recipe: paired differences on the same speakers"
  echo
  echo "Each row: the variant's nested alert figure on the 25 held-out speakers' test calls, minus"
  echo "the shipped recipe's, with the 95 % interval of that difference from 2000 bootstrap draws"
  echo "of the speakers (each corpus within itself; \`callmon bench compare\`). An interval that"
  echo "contains zero is no evidence either way. Written by \`bash $R/compare_recipes.sh\`."
  for v in seed2:"the shipped recipe, seed 4321" seed3:"the shipped recipe, seed 99" \
           spec_augment:"SpecAugment" \
           freeze2:"two lowest layers frozen" distill:"distilled from base" \
           ens2:"the two seeds averaged (an ensemble: two tiny models per window)" \
           whisper-base:"Whisper base" base_seed2:"Whisper base, seed 4321" \
           base4:"Whisper base cut to its lowest 4 layers (\`--backbone whisper-base:4\`)"; do
    name=${v%%:*}; title=${v#*:}
    echo; echo "## $title (\`calibration_$name.json\`)"; echo
    callmon bench compare $R/calibration.json $R/calibration_$name.json \
        --names "shipped,$name" --out $R/compare_$name.json
  done
  echo; echo "## Whisper base: seed 4321 against the seed 1234 it was judged by"; echo
  callmon bench compare $R/calibration_whisper-base.json $R/calibration_base_seed2.json \
      --names "base 1234,base 4321" --out $R/compare_base_seeds.json
  echo; echo "## Whisper base cut to its lowest 4 layers against the whole of base"; echo
  callmon bench compare $R/calibration_whisper-base.json $R/calibration_base4.json \
      --names "whisper-base,base4" --out $R/compare_base4_vs_base.json
  echo; echo "# Against the shipped recipe's three seeds"; echo
  echo "The shipped recipe run with seeds 1234 (shipped), 4321 and 99: its figure is the mean of"
  echo "the three, and each bootstrap draw resamples the three seeds as well as the speakers, so"
  echo "the interval holds the seed's noise too (\`callmon bench compare A,B,C D\`). Each variant"
  echo "is one run, as above."
  T=$R/calibration.json,$R/calibration_seed2.json,$R/calibration_seed3.json
  for v in spec_augment:"SpecAugment" freeze2:"two lowest layers frozen" \
           distill:"distilled from base" whisper-base:"Whisper base" \
           base4:"Whisper base cut to its lowest 4 layers"; do
    name=${v%%:*}; title=${v#*:}
    echo; echo "## $title against the shipped recipe's three seeds"; echo
    callmon bench compare $T $R/calibration_$name.json \
        --names "tiny ×3,$name" --out $R/compare_seeds3_$name.json
  done
  echo; echo "## Whisper base's two seeds against the shipped recipe's three seeds"; echo
  callmon bench compare $T $R/calibration_whisper-base.json,$R/calibration_base_seed2.json \
      --names "tiny ×3,base ×2" --out $R/compare_seeds3_base_seeds2.json
} > $R/compare_recipes.md
