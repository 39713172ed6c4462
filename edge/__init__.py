"""The township edge (基层云PACS): an embedded Lancang at a township that takes studies from its
modalities on the LAN, serves them a modality worklist, and forwards every study to the
region over a weak line, resumably, until the region has verified each instance."""
