"""Majority arithmetic against naive twins."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvraft.raft import quorum


@given(st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=9))
def test_commit_index_is_the_highest_index_a_majority_reached(matches: list[int]) -> None:
    """The quorum commit index equals the naive search over candidate indexes.

    Reference: Raft §5.3, Figure 2 (rules for leaders: the N a majority of matchIndex reach)
    """
    need = len(matches) // 2 + 1
    naive = max(n for n in {0, *matches} if sum(1 for m in matches if m >= n) >= need)

    assert quorum.commit_index(matches) == naive


@given(
    st.integers(min_value=1, max_value=9).flatmap(
        lambda voters: st.tuples(
            st.just(voters),
            st.dictionaries(st.integers(0, voters - 1), st.booleans(), max_size=voters),
        )
    )
)
def test_vote_result_matches_counting(case: tuple[int, dict[int, bool]]) -> None:
    """Won with a majority of grants; lost once the missing votes cannot make one.

    Reference: Raft §5.2
    """
    voters, votes = case
    need = voters // 2 + 1
    granted = sum(votes.values())
    best_case = granted + (voters - len(votes))

    result = quorum.vote_result(votes, voters)

    if granted >= need:
        assert result is quorum.VoteResult.WON
    elif best_case < need:
        assert result is quorum.VoteResult.LOST
    else:
        assert result is quorum.VoteResult.PENDING
