"""Operations on sample streams: stages (filters, slices, --where), sort and shuffle, description, creation, weighted mixing."""
