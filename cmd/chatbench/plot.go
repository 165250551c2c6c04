package main

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	colBlue   = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	colOrange = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	colGreen  = color.RGBA{R: 44, G: 160, B: 44, A: 255}
	colRed    = color.RGBA{R: 214, G: 39, B: 40, A: 255}
)

// writePlot draws the latency distribution (HDR style: latency against
// percentile on a log scale of 1/(1-q)) and the per-second rates over time
// into one PNG.
func writePlot(b *bench, r *Report, path string) error {
	top := latencyPlot(b, r)
	bottom, err := ratePlot(r)
	if err != nil {
		return err
	}
	const w, h = 20 * vg.Centimeter, 24 * vg.Centimeter
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter, PadY: 8 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	plots := [][]*plot.Plot{{top}, {bottom}}
	canvases := plot.Align(plots, tiles, dc)
	top.Draw(canvases[0][0])
	bottom.Draw(canvases[1][0])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// nines maps quantile q to -log10(1-q): 50% -> 0.3, 99% -> 2, 99.9% -> 3.
func nines(q float64) float64 { return -math.Log10(1 - q) }

func latencyPlot(b *bench, r *Report) *plot.Plot {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("chatbench %s: latency distribution", r.Command)
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "milliseconds"
	var ticks []plot.Tick
	for _, t := range []struct {
		q   float64
		lab string
	}{{0, "0%"}, {0.5, "50%"}, {0.9, "90%"}, {0.99, "99%"}, {0.999, "99.9%"}, {0.9999, "99.99%"}, {0.99999, "99.999%"}} {
		ticks = append(ticks, plot.Tick{Value: nines(t.q), Label: t.lab})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Centimeter
	lines := 0
	add := func(name string, h *hist, c color.Color) {
		n := h.Count()
		if n == 0 {
			return
		}
		lines++
		// Up to the quantile that still has ~10 samples beyond it.
		maxN := math.Min(nines(1-10/float64(n)), 5)
		var pts plotter.XYs
		for x := 0.0; x <= maxN+1e-9; x += 0.02 {
			q := 1 - math.Pow(10, -x)
			pts = append(pts, plotter.XY{X: x, Y: max(ms(h.Quantile(q)), 0.001)})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return
		}
		l.Color = c
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (n=%d)", name, n), l)
	}
	add("send -> delivery", &b.lat, colBlue)
	add("send -> ack", &b.ackLat, colOrange)
	if b.lat.Count() == 0 && b.ackLat.Count() == 0 {
		// A run without messages (connections): how long opens took.
		add("open -> Welcome", &b.conLat, colGreen)
	}
	if lines > 0 {
		// Latencies span orders of magnitude: log scale (which needs data).
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	p.Add(plotter.NewGrid())
	return p
}

func ratePlot(r *Report) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "throughput over time"
	p.X.Label.Text = "seconds"
	p.Y.Label.Text = "per second"
	p.Legend.Top = true
	p.Legend.Left = true
	series := []struct {
		name string
		get  func(Sample) uint64
		c    color.Color
	}{
		{"sent", func(s Sample) uint64 { return s.Sent }, colBlue},
		{"accepted", func(s Sample) uint64 { return s.Accepted }, colOrange},
		{"delivered", func(s Sample) uint64 { return s.Delivered }, colGreen},
		{"synced", func(s Sample) uint64 { return s.Synced }, colRed},
	}
	added := 0
	for _, se := range series {
		var pts plotter.XYs
		var prev Sample
		any := false
		for i, s := range r.Series {
			if i > 0 && s.T > prev.T {
				pts = append(pts, plotter.XY{X: s.T, Y: float64(se.get(s)-se.get(prev)) / (s.T - prev.T)})
			}
			if se.get(s) > 0 {
				any = true
			}
			prev = s
		}
		if !any || len(pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.Color = se.c
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(se.name, l)
		added++
	}
	// Open streams (connections run) on the same axes when nothing else.
	if added == 0 {
		var pts plotter.XYs
		for _, s := range r.Series {
			pts = append(pts, plotter.XY{X: s.T, Y: float64(s.Open)})
		}
		if len(pts) > 0 {
			l, err := plotter.NewLine(pts)
			if err != nil {
				return nil, err
			}
			l.Color = colBlue
			p.Add(l)
			p.Legend.Add("open streams", l)
			p.Y.Label.Text = "streams"
		}
	}
	p.Add(plotter.NewGrid())
	return p, nil
}
