"""Maternal care (云上妇幼): pregnancies, their risk colour graded from the 2017 规范's criteria
with its history, gestational age, and referrals up and down the tree (双向转诊) with the record
the receiving hospital needs and the transport status."""
