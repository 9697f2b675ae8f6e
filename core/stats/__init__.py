"""Statistics of a pairwise human evaluation: pure functions on a data frame of ratings.

A ratings frame has one row per rating with at least `item_id`, `rater`, `choice` (left|right|tie|both_bad),
`left_arm`, `right_arm`, `winner_arm` (the arm chosen, mapped when the rating was written) and `is_gold`. Optional:
`neuron` (and `model`), the unit of the primary analysis and of every bootstrap; `gold_choice` (the known answer of
a gold item); `left_score`/`right_score` (simulation scores, METHOD.md §4) and, per automated score kind, the columns
named by `automated_column`. Gold items never enter arm statistics; ties and both-bad are counted and reported,
never dropped silently: win rates are over decisive ratings (left or right) and the counts beside them say how many
were not decisive.

proportions    win rates, Wilson CIs, sign tests, position bias, gold items, ratings coded relative to their pair
neuron_level   the primary (neuron-level) and secondary (mixed-model) analyses, Holm, bootstrap helpers
agreement      κ and α between raters on the relative coding, with bootstrap CIs over items
bradley_terry  strengths of three or more arms, bootstrap over neurons, pairwise differences, ranks
automated      humans against each automated score kind: κ, logistic regression, rank correlation
summary        the whole study as one JSON-safe summary
Sample sizes and detectable effects are in core.power.
"""

from core.stats.agreement import (
    RELATIVE_CODES,
    agreement,
    agreement_method,
    alpha_from_coincidences,
    cohen_kappa,
    fleiss_from_counts,
    fleiss_kappa,
    krippendorff_alpha,
    unit_coincidences,
)
from core.stats.automated import (
    AUTOMATED_KINDS,
    AutomatedComparison,
    ScoreKappa,
    ScoreLogistic,
    ScoreRankCorrelation,
    arm_mean_scores,
    automated_column,
    automated_comparisons,
    automated_kinds,
    human_vs_automated,
    score_kappa,
    score_logistic,
    score_rank_correlation,
)
from core.stats.bradley_terry import (
    BT_PRIOR,
    BradleyTerryFit,
    bradley_terry,
    bradley_terry_fit,
    mm_strengths,
    strongly_connected,
)
from core.stats.neuron_level import (
    BOOTSTRAP_RESAMPLES,
    MIN_MIXED_RATINGS,
    NEURON_COLUMNS,
    PrimaryAnalysis,
    SecondaryAnalysis,
    cluster_bootstrap_ci,
    cluster_keys,
    holm,
    mixed_effects,
    multiplicities,
    neuron_level,
    neuron_shares,
    sign_tests,
)
from core.stats.proportions import (
    CHOICES,
    CONFIDENCE,
    DECISIVE,
    arm_ratings,
    clean,
    exclude_low_gold_raters,
    gold_accuracy,
    outcome_labels,
    pair_counts,
    pair_mask,
    per_rater,
    percentile_interval,
    position_bias,
    proportion,
    relative_outcomes,
    sign_test,
    wilson_interval,
    win_rate,
    z_value,
)
from core.stats.summary import RATING_UNIT_NOTE, item_aggregates, summary_from_ratings

__all__ = [
    "AUTOMATED_KINDS",
    "BOOTSTRAP_RESAMPLES",
    "BT_PRIOR",
    "CHOICES",
    "CONFIDENCE",
    "DECISIVE",
    "MIN_MIXED_RATINGS",
    "NEURON_COLUMNS",
    "RATING_UNIT_NOTE",
    "RELATIVE_CODES",
    "AutomatedComparison",
    "BradleyTerryFit",
    "PrimaryAnalysis",
    "ScoreKappa",
    "ScoreLogistic",
    "ScoreRankCorrelation",
    "SecondaryAnalysis",
    "agreement",
    "agreement_method",
    "alpha_from_coincidences",
    "arm_mean_scores",
    "arm_ratings",
    "automated_column",
    "automated_comparisons",
    "automated_kinds",
    "bradley_terry",
    "bradley_terry_fit",
    "clean",
    "cluster_bootstrap_ci",
    "cluster_keys",
    "cohen_kappa",
    "exclude_low_gold_raters",
    "fleiss_from_counts",
    "fleiss_kappa",
    "gold_accuracy",
    "holm",
    "human_vs_automated",
    "item_aggregates",
    "krippendorff_alpha",
    "mixed_effects",
    "mm_strengths",
    "multiplicities",
    "neuron_level",
    "neuron_shares",
    "outcome_labels",
    "pair_counts",
    "pair_mask",
    "per_rater",
    "percentile_interval",
    "position_bias",
    "proportion",
    "relative_outcomes",
    "score_kappa",
    "score_logistic",
    "score_rank_correlation",
    "sign_test",
    "sign_tests",
    "strongly_connected",
    "summary_from_ratings",
    "unit_coincidences",
    "wilson_interval",
    "win_rate",
    "z_value",
]
