package kafka

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// A record given back while draining holds the commit where it is for good,
// and counts as settled; a finished record is never given back.
func TestTrackerGiveBack(t *testing.T) {
	var trk tracker
	seq := make([]int64, 5)
	for i := range seq {
		seq[i] = trk.add(&kgo.Record{Offset: int64(100 + i), LeaderEpoch: 1}, time.Now())
	}
	trk.done(seq[0])
	trk.giveBack(seq[1])
	trk.done(seq[2])
	trk.done(seq[3])
	trk.giveBack(seq[3]) // finished first: stays finished
	if eo, ok := trk.mark(); !ok || eo.Offset != 101 {
		t.Fatalf("mark = %v %v, want offset 101 (the record given back)", eo, ok)
	}
	if !trk.settled(103) {
		t.Error("not settled up to 103, whose records finished or were given back")
	}
	if trk.settled(104) {
		t.Error("settled up to 104, whose record is still running")
	}
	trk.done(seq[4])
	if !trk.settled(104) {
		t.Error("not settled up to 104 once its record finished")
	}
	if eo, moved := trk.mark(); moved || eo.Offset != 101 {
		t.Errorf("mark = %v moved %v; want 101, unmoved: nothing passes a record given back", eo, moved)
	}
	if at, ok := trk.oldest(); !ok || at.IsZero() {
		t.Errorf("oldest = %v %v, want the record given back", at, ok)
	}
}
